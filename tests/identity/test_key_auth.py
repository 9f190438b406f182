"""key_auth and acl through the real daemon, keys made with the real CLI and store."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from .identity_support import echo_app, make_key, route, upstream_url

SPOOFED = {
    "X-Gateway-Tenant": "globex",
    "X-Gateway-Subject": "root",
    "X-Gateway-Key-Id": "admin",
    "X-Gateway-Roles": "admin",
    "X-Gateway-Scopes": "*",
}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", *args], capture_output=True, text=True, timeout=30
    )


async def start(gateway, backend, config, tmp_path: Path, seen=None, extra_routes=()):
    srv = await backend(echo_app(seen))
    cfg = config(
        upstreams={"api": {"targets": [upstream_url(srv)]}},
        routes=[
            route("keys", "api", "/k/", [{"key_auth": {"query": "api_key"}}]),
            route(
                "acl",
                "api",
                "/acl/",
                [{"key_auth": {}}, {"acl": {"allow": ["tenant:acme"], "deny": ["key:old-*"]}}],
            ),
            route("open", "api", "/", []),
            *extra_routes,
        ],
    )
    return cfg, await gateway(cfg)


async def test_valid_key_reaches_backend_with_principal_headers(gateway, backend, config, tmp_path):
    cfg, gw = await start(gateway, backend, config, tmp_path)
    state = Path(cfg["state"]["dir"])
    key, rec = await make_key(state, "acme", scopes={"api:read", "api:write"})
    async with aiohttp.ClientSession() as s:
        headers = {"Authorization": f"Bearer {key}", **SPOOFED}
        async with s.get(gw.url + "/k/x", headers=headers) as r:
            assert r.status == 200
            seen = (await r.json())["headers"]
        assert seen["X-Gateway-Tenant"] == "acme"
        assert seen["X-Gateway-Key-Id"] == rec.key_id
        assert seen["X-Gateway-Scopes"] == "api:read api:write"
        assert seen["X-Gateway-Auth"] == "key"
        assert "X-Gateway-Roles" not in seen  # the spoofed copy is gone
        assert "Authorization" not in seen  # hide_credentials
        # the key in a query parameter works too, and is removed before forwarding
        async with s.get(gw.url + f"/k/q?a=1&api_key={key}&b=2") as r:
            assert r.status == 200
            assert (await r.json())["path"] == "/k/q?a=1&b=2"


async def test_spoofed_headers_never_reach_the_backend(gateway, backend, config, tmp_path):
    _, gw = await start(gateway, backend, config, tmp_path)
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/open", headers=SPOOFED) as r:
        assert r.status == 200
        seen = (await r.json())["headers"]
    lowered = {k.lower() for k in seen}
    assert not {h.lower() for h in SPOOFED} & lowered


async def test_bad_keys_are_401_with_challenge(gateway, backend, config, tmp_path):
    cfg, gw = await start(gateway, backend, config, tmp_path)
    key, rec = await make_key(Path(cfg["state"]["dir"]), "acme")
    wrong_secret = f"gwd_{rec.key_id}_" + "B" * 43
    expired, _ = await make_key(Path(cfg["state"]["dir"]), "acme", expires_in=0.2)
    await asyncio.sleep(0.25)
    cases = {
        "missing": {},
        "garbage": {"Authorization": "Bearer !!!"},
        "basic": {"Authorization": "Basic dXNlcjpwYXNz"},
        "unknown id": {"Authorization": "Bearer gwd_nosuchkey_" + "C" * 43},
        "wrong secret": {"Authorization": f"Bearer {wrong_secret}"},
        "expired": {"Authorization": f"Bearer {expired}"},
        "huge": {"Authorization": "Bearer " + "x" * 8000},
    }
    async with aiohttp.ClientSession() as s:
        for name, headers in cases.items():
            async with s.get(gw.url + "/k/x", headers=headers) as r:
                assert r.status == 401, name
                assert r.headers["WWW-Authenticate"].startswith('Bearer realm="gatewayd"'), name
                body = await r.json()
                assert body["error"]["code"] == "unauthorized", name
                assert body["error"]["request_id"] == r.headers["X-Request-ID"]
                assert key.split("_", 2)[2] not in await r.text()


async def test_cli_revoke_takes_effect_within_a_second(gateway, backend, config, tmp_path):
    _, gw = await start(gateway, backend, config, tmp_path)
    out = cli("keys", "create", "-c", str(gw.config_path), "--tenant", "acme", "--scope", "a:b")
    assert out.returncode == 0, out.stderr
    key = out.stdout.splitlines()[0]
    key_id = key.split("_")[1]
    auth = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/k/x", headers=auth) as r:
            assert r.status == 200  # now cached in the daemon
        out = cli("keys", "revoke", "-c", str(gw.config_path), key_id)
        assert out.returncode == 0, out.stderr
        revoked_at = time.monotonic()
        while True:
            async with s.get(gw.url + "/k/x", headers=auth) as r:
                if r.status == 401:
                    break
            assert time.monotonic() - revoked_at < 1.0, "still accepted 1 s after revoke"
            await asyncio.sleep(0.02)


async def test_acl_allow_and_deny(gateway, backend, config, tmp_path):
    cfg, gw = await start(gateway, backend, config, tmp_path)
    state = Path(cfg["state"]["dir"])
    acme, _ = await make_key(state, "acme", key_id="live-1")
    old, _ = await make_key(state, "acme", key_id="old-1")
    globex, _ = await make_key(state, "globex")
    async with aiohttp.ClientSession() as s:
        for key, want in ((acme, 200), (old, 403), (globex, 403)):
            async with s.get(gw.url + "/acl/x", headers={"Authorization": f"Bearer {key}"}) as r:
                assert r.status == want
                if want == 403:
                    assert (await r.json())["error"]["code"] == "forbidden"
        async with s.get(gw.url + "/acl/x") as r:
            assert r.status == 401
