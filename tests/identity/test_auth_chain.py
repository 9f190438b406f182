"""Two auth plugins on one route, through the real daemon: the first authenticator wins, and
the X-Gateway-* headers it set reach the backend (issue 10, defect 5)."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import jwt

from .identity_support import echo_app, make_key, route, upstream_url

SECRET = "test-secret-0123456789abcdef0123456789"
SPOOFED = {"X-Gateway-Tenant": "globex", "X-Gateway-Subject": "root", "X-Gateway-Auth": "key"}


def hs256(**claims: object) -> str:
    now = int(time.time())
    payload = {"sub": "user-7", "org": "acme", "roles": ["admin", "dev"], "exp": now + 300}
    payload.update(claims)
    return jwt.encode(payload, SECRET, algorithm="HS256")


async def start(gateway, backend, config):
    srv = await backend(echo_app())
    jwt_cfg = {
        "algorithms": ["HS256"],
        "secret": SECRET,
        "optional": True,
        "hide_credentials": True,
        "claims": {"tenant": "org", "roles": "roles"},
    }
    cfg = config(
        upstreams={"api": {"targets": [upstream_url(srv)]}},
        routes=[
            route(
                "both",
                "api",
                "/",
                [{"jwt_auth": jwt_cfg}, {"key_auth": {"header": "X-API-Key", "optional": True}}],
            )
        ],
    )
    return cfg, await gateway(cfg)


async def seen_headers(s: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> dict:
    async with s.get(url, headers=headers) as r:
        assert r.status == 200, await r.text()
        return dict((await r.json())["headers"])


async def test_jwt_then_optional_key_auth_forwards_the_jwt_principal(gateway, backend, config):
    _, gw = await start(gateway, backend, config)
    async with aiohttp.ClientSession() as s:
        seen = await seen_headers(
            s, gw.url + "/x", {"Authorization": f"Bearer {hs256()}", **SPOOFED}
        )
    assert seen["X-Gateway-Auth"] == "jwt"
    assert seen["X-Gateway-Subject"] == "user-7"
    assert seen["X-Gateway-Tenant"] == "acme"
    assert seen["X-Gateway-Roles"] == "admin dev"
    assert "Authorization" not in seen  # jwt_auth hide_credentials


async def test_key_found_by_the_second_plugin_is_forwarded(gateway, backend, config):
    cfg, gw = await start(gateway, backend, config)
    key, rec = await make_key(Path(cfg["state"]["dir"]), "initech")
    async with aiohttp.ClientSession() as s:
        seen = await seen_headers(s, gw.url + "/x", {"X-API-Key": key, **SPOOFED})
    assert seen["X-Gateway-Auth"] == "key"
    assert seen["X-Gateway-Tenant"] == "initech"
    assert seen["X-Gateway-Key-Id"] == rec.key_id
    assert "X-Gateway-Roles" not in seen
    assert "X-API-Key" not in seen


async def test_first_authenticator_wins_and_later_credentials_stay_hidden(gateway, backend, config):
    cfg, gw = await start(gateway, backend, config)
    key, _ = await make_key(Path(cfg["state"]["dir"]), "initech")
    async with aiohttp.ClientSession() as s:
        seen = await seen_headers(
            s, gw.url + "/x", {"Authorization": f"Bearer {hs256()}", "X-API-Key": key}
        )
        # Without any credential: no principal, and no spoofed identity either.
        anonymous = await seen_headers(s, gw.url + "/x", SPOOFED)
    assert seen["X-Gateway-Auth"] == "jwt"
    assert seen["X-Gateway-Tenant"] == "acme"
    assert "X-Gateway-Key-Id" not in seen  # key_auth left the request alone ...
    assert "X-API-Key" not in seen  # ... except that its credential is still not forwarded
    assert not {h.lower() for h in SPOOFED} & {h.lower() for h in anonymous}
