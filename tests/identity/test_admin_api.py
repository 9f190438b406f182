"""The admin API: token checks, redacted config, routes, keys, reload."""

from __future__ import annotations

import json

import aiohttp

from .identity_support import ADMIN_HASH, ADMIN_TOKEN, echo_app, route, upstream_url

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def start(gateway, backend, config):
    srv = await backend(echo_app())
    cfg = config(
        admin={
            "listen": config()["admin"]["listen"],
            "tokens": [{"id": "ops", "hash": ADMIN_HASH}],
        },
        state={"dir": config()["state"]["dir"], "redis_url": "redis://:hunter2@127.0.0.1:1/0"},
        upstreams={"api": {"targets": [upstream_url(srv)]}},
        routes=[
            route("keys", "api", "/k/", [{"key_auth": {}}]),
            route(
                "hooks",
                "api",
                "/hooks/",
                [{"webhook_signature": {"provider": "github", "secret": "gh-very-secret"}}],
            ),
        ],
    )
    return await gateway(cfg)


async def test_tokens_are_required(gateway, backend, config):
    gw = await start(gateway, backend, config)
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.admin_url + "/_admin/config") as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await r.json())["error"]["code"] == "unauthorized"
        bad = {"Authorization": "Bearer not-the-token"}
        async with s.get(gw.admin_url + "/_admin/keys", headers=bad) as r:
            assert r.status == 403
        async with s.get(gw.admin_url + "/_health") as r:
            assert r.status == 200  # liveness stays open


async def test_config_is_redacted_and_routes_listed(gateway, backend, config):
    gw = await start(gateway, backend, config)
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.admin_url + "/_admin/config", headers=AUTH) as r:
            assert r.status == 200
            text = await r.text()
        assert "gh-very-secret" not in text and "hunter2" not in text
        assert ADMIN_HASH not in text
        body = json.loads(text)
        assert body["config"]["admin"]["tokens"][0] == {"id": "ops", "hash": "***"}
        async with s.get(gw.admin_url + "/_admin/routes", headers=AUTH) as r:
            routes = (await r.json())["routes"]
        assert {rt["name"]: rt["plugins"] for rt in routes} == {
            "keys": ["key_auth"],
            "hooks": ["webhook_signature"],
        }


async def test_key_lifecycle_through_the_api(gateway, backend, config):
    gw = await start(gateway, backend, config)
    async with aiohttp.ClientSession() as s:
        spec = {"tenant": "acme", "scopes": ["api:read"], "expires": "30d", "key_id": "web-1"}
        async with s.post(gw.admin_url + "/_admin/keys", json=spec, headers=AUTH) as r:
            assert r.status == 201
            created = await r.json()
        key = created["key"]
        assert created["record"]["key_id"] == "web-1" and created["record"]["status"] == "active"
        async with s.post(gw.admin_url + "/_admin/keys", json=spec, headers=AUTH) as r:
            assert r.status == 409
        async with s.post(gw.admin_url + "/_admin/keys", json={"scopes": 1}, headers=AUTH) as r:
            assert r.status == 400
        async with s.post(gw.admin_url + "/_admin/keys", data=b"{nope", headers=AUTH) as r:
            assert r.status == 400
        async with s.get(gw.admin_url + "/_admin/keys", headers=AUTH) as r:
            listed = await r.text()
        assert "web-1" in listed and key.split("_", 2)[2] not in listed and "$2b$" not in listed
        use = {"Authorization": f"Bearer {key}"}
        async with s.get(gw.url + "/k/x", headers=use) as r:
            assert r.status == 200
        async with s.post(
            gw.admin_url + "/_admin/keys/web-1/rotate", json={"grace": "1h"}, headers=AUTH
        ) as r:
            assert r.status == 200
            new_key = (await r.json())["key"]
        for k in (key, new_key):  # both work during the grace period
            async with s.get(gw.url + "/k/x", headers={"Authorization": f"Bearer {k}"}) as r:
                assert r.status == 200
        async with s.post(gw.admin_url + "/_admin/keys/web-1/revoke", headers=AUTH) as r:
            assert r.status == 200 and (await r.json())["status"] == "revoked"
        for k in (key, new_key):
            async with s.get(gw.url + "/k/x", headers={"Authorization": f"Bearer {k}"}) as r:
                assert r.status == 401
        async with s.post(gw.admin_url + "/_admin/keys/nope/revoke", headers=AUTH) as r:
            assert r.status == 404


async def test_reload_endpoint(gateway, backend, config):
    gw = await start(gateway, backend, config)
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.admin_url + "/_admin/reload", headers=AUTH) as r:
            assert r.status == 200
            assert (await r.json())["generation"] == 2
        gw.write_config("routes: [nope")
        async with s.post(gw.admin_url + "/_admin/reload", headers=AUTH) as r:
            assert r.status == 422
            assert (await r.json())["error"]["code"] == "config_rejected"
