"""The admin API: token checks, redacted config, routes, keys, reload."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import aiohttp
import bcrypt

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
        assert body["config"]["admin"]["tokens"][0] == {
            "id": "ops",
            "hash": "***",
            "role": "operator",
        }
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


# -- plugins' own admin routes (gatewayd.chain.AdminRoute) -------------------------------------

VIEWER_TOKEN = "viewer-test-token-0123456789"
VIEWER = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
VIEWER_HASH = bcrypt.hashpw(VIEWER_TOKEN.encode(), bcrypt.gensalt(4)).decode()

ADMIN_PLUGIN = textwrap.dedent(
    """
    from gatewayd.chain import AdminRoute, Plugin, PluginError, Response


    async def state(request, instances):
        return Response.json(
            {
                "routes": sorted(p.context.route for p in instances),
                "query": dict(request.query),
                "admin": request.admin,
                "role": request.role,
                "path": request.path,
            }
        )


    async def put_item(request, instances):
        if request.params["name"] == "forbidden":
            raise PluginError(409, "conflict", "that name is taken")
        return Response.json({"name": request.params["name"], "body": request.body}, status=201)


    async def boom(request, instances):
        raise RuntimeError("SECRET-IN-THE-TRACEBACK")


    async def stream(request, instances):
        async def chunks():
            for i in range(3):
                yield f"chunk{i};".encode()

        return Response(200, {"Content-Type": "text/plain"}, chunks())


    class AdminDemoPlugin(Plugin):
        name = "admin_demo"

        @classmethod
        def admin_routes(cls):
            return [
                AdminRoute("GET", "/state", state, summary="what the handler sees"),
                AdminRoute("POST", "/items/{name}", put_item, role="operator"),
                AdminRoute("GET", "/boom", boom),
                AdminRoute("GET", "/stream", stream),
            ]

        async def on_request(self, ctx):
            return None
    """
)


def admin_plugin_env(tmp_path: Path) -> dict[str, str]:
    """Install ``admin_demo`` as a distribution on a private path; the env for the daemon."""
    site = tmp_path / "site"
    dist = site / "gatewayd_admin_demo-0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (site / "gatewayd_admin_demo.py").write_text(ADMIN_PLUGIN)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gatewayd-admin-demo\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "[gatewayd.plugins]\nadmin_demo = gatewayd_admin_demo:AdminDemoPlugin\n"
    )
    return {"PYTHONPATH": str(site)}


def admin_demo_config(config, srv, routes=("a", "b")):
    return config(
        admin={
            "listen": config()["admin"]["listen"],
            "tokens": [
                {"id": "ops", "hash": ADMIN_HASH},
                {"id": "watcher", "hash": VIEWER_HASH, "role": "viewer"},
            ],
        },
        upstreams={"api": {"targets": [upstream_url(srv)]}},
        routes=[route(r, "api", f"/{r}/", [{"admin_demo": {}}]) for r in routes],
    )


async def test_plugin_admin_routes_are_mounted_with_roles(gateway, backend, config, tmp_path):
    srv = await backend(echo_app())
    gw = await gateway(admin_demo_config(config, srv), env=admin_plugin_env(tmp_path))
    base = gw.admin_url + "/_admin/plugins"
    async with aiohttp.ClientSession() as s:
        async with s.get(base, headers=VIEWER) as r:
            assert r.status == 200
            listed = {p["name"]: p["routes"] for p in (await r.json())["plugins"]}
        assert {
            "method": "POST",
            "path": base[len(gw.admin_url) :] + "/admin_demo/items/{name}",
            "role": "operator",
        } in listed["admin_demo"]
        assert any(r["path"] == "/_admin/plugins/cache/purge" for r in listed["cache"])
        assert any(
            r["path"] == "/_admin/plugins/circuit_breaker/breakers"
            for r in listed["circuit_breaker"]
        )
        # A viewer route: any admin token; the handler sees this generation's instances.
        async with s.get(base + "/admin_demo/state?x=1", headers=VIEWER) as r:
            assert r.status == 200
            assert await r.json() == {
                "routes": ["a", "b"],
                "query": {"x": "1"},
                "admin": "watcher",
                "role": "viewer",
                "path": "/state",
            }
        # An operator route: a viewer token is refused, an operator token gets through.
        async with s.post(base + "/admin_demo/items/one", json={"v": 1}, headers=VIEWER) as r:
            assert r.status == 403
            assert (await r.json())["error"]["code"] == "forbidden"
        async with s.post(base + "/admin_demo/items/one", json={"v": 1}, headers=AUTH) as r:
            assert r.status == 201
            assert await r.json() == {"name": "one", "body": {"v": 1}}
        async with s.post(base + "/admin_demo/items/forbidden", headers=AUTH) as r:
            assert r.status == 409 and (await r.json())["error"]["code"] == "conflict"
        async with s.post(base + "/admin_demo/items/one", data=b"{nope", headers=AUTH) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "bad_json"
        # The same admin auth as every admin endpoint.
        async with s.get(base + "/admin_demo/state") as r:
            assert r.status == 401 and "WWW-Authenticate" in r.headers
        async with s.get(base + "/admin_demo/state", headers={"Authorization": "Bearer no"}) as r:
            assert r.status == 403
        # Streamed bodies pass.
        async with s.get(base + "/admin_demo/stream", headers=VIEWER) as r:
            assert await r.text() == "chunk0;chunk1;chunk2;"


async def test_plugin_admin_route_errors(gateway, backend, config, tmp_path):
    srv = await backend(echo_app())
    gw = await gateway(admin_demo_config(config, srv), env=admin_plugin_env(tmp_path))
    base = gw.admin_url + "/_admin/plugins"
    async with aiohttp.ClientSession() as s:
        async with s.get(base + "/admin_demo/boom", headers=AUTH) as r:
            assert r.status == 500
            text = await r.text()
        error = json.loads(text)["error"]
        assert error["code"] == "plugin_error" and error["request_id"]
        assert "SECRET" not in text and "Traceback" not in text
        assert "SECRET-IN-THE-TRACEBACK" in gw.logs()  # the operator finds it in the log
        async with s.get(base + "/nope/state", headers=AUTH) as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
        async with s.get(base + "/admin_demo/nope", headers=AUTH) as r:
            assert r.status == 404
        async with s.delete(base + "/admin_demo/state", headers=AUTH) as r:
            assert r.status == 405 and r.headers["Allow"] == "GET"
        async with s.head(base + "/admin_demo/state", headers=AUTH) as r:
            assert r.status == 200  # HEAD of a GET route


async def test_plugin_admin_routes_follow_the_serving_generation(
    gateway, backend, config, tmp_path
):
    srv = await backend(echo_app())
    gw = await gateway(admin_demo_config(config, srv), env=admin_plugin_env(tmp_path))
    url = gw.admin_url + "/_admin/plugins/admin_demo/state"
    gw.write_config(
        admin_demo_config(config, srv, routes=("c",))
        | {k: gw.config[k] for k in ("listen", "admin", "state")}
    )
    await gw.reload()
    async with aiohttp.ClientSession() as s, s.get(url, headers=AUTH) as r:
        assert (await r.json())["routes"] == ["c"]


async def test_viewer_tokens_read_but_do_not_change(gateway, backend, config, tmp_path):
    srv = await backend(echo_app())
    gw = await gateway(admin_demo_config(config, srv), env=admin_plugin_env(tmp_path))
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.admin_url + "/_admin/routes", headers=VIEWER) as r:
            assert r.status == 200
        for path, body in (("/_admin/keys", {"tenant": "acme"}), ("/_admin/reload", None)):
            async with s.post(gw.admin_url + path, json=body, headers=VIEWER) as r:
                assert r.status == 403, path
                assert (await r.json())["error"]["code"] == "forbidden"
        async with s.post(gw.admin_url + "/_admin/reload", headers=AUTH) as r:
            assert r.status == 200


def test_redaction_is_linear_on_hostile_strings() -> None:
    """A long run of scheme characters without "://" (an event payload, a key description) was
    quadratic in the URL-password pattern: 64 KiB took 30 s on the event loop."""
    from gatewayd.admin.api import redact

    started = time.monotonic()
    for value in ("x" * 262_144, "a+" * 131_072 + "://", "a://" * 65_536):
        assert redact({"description": value}) == {"description": value}
    assert time.monotonic() - started < 2.0
    long_scheme = "q" * 100 + "redis://user:pw@host/0"
    assert redact({"url": long_scheme}) == {"url": "q" * 100 + "redis://user:***@host/0"}
    assert redact({"url": "https://u:p@h/x"}) == {"url": "https://u:***@h/x"}
