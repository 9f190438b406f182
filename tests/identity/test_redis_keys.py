"""Redis mode: two gateway instances share keys; a revocation reaches both within a second."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from .identity_support import ADMIN_HASH, ADMIN_TOKEN, echo_app, route, upstream_url

pytestmark = pytest.mark.redis
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.mark.parametrize("how", ["revoke", "delete"])
async def test_revocation_reaches_the_second_instance(
    gateway, backend, config, redis_url, tmp_path, how
):
    srv = await backend(echo_app())
    gws = []
    for i in range(2):
        cfg = config(
            admin={
                "listen": config()["admin"]["listen"],
                "tokens": [{"id": "ops", "hash": ADMIN_HASH}],
            },
            state={"dir": str(tmp_path / f"state{i}"), "backend": "redis", "redis_url": redis_url},
            upstreams={"api": {"targets": [upstream_url(srv)]}},
            routes=[route("keys", "api", "/", [{"key_auth": {}}])],
        )
        gws.append(await gateway(cfg))
    a, b = gws
    async with aiohttp.ClientSession() as s:
        async with s.post(a.admin_url + "/_admin/keys", json={"tenant": "acme"}, headers=AUTH) as r:
            assert r.status == 201
            created = await r.json()
        use = {"Authorization": f"Bearer {created['key']}"}
        for gw in (a, b):  # both instances know the key and cache it
            async with s.get(gw.url + "/x", headers=use) as r:
                assert r.status == 200
        key_id = created["record"]["key_id"]
        if how == "revoke":
            async with s.post(a.admin_url + f"/_admin/keys/{key_id}/revoke", headers=AUTH) as r:
                assert r.status == 200
        else:  # revoked, then the record is gone on both
            async with s.delete(a.admin_url + f"/_admin/keys/{key_id}", headers=AUTH) as r:
                assert r.status == 204
            for gw in (a, b):
                async with s.get(gw.admin_url + f"/_admin/keys/{key_id}", headers=AUTH) as r:
                    assert r.status == 404
        revoked = time.monotonic()
        for gw in (b, a):
            while True:
                async with s.get(gw.url + "/x", headers=use) as r:
                    if r.status == 401:
                        break
                assert time.monotonic() - revoked < 1.0, "revocation not seen within 1 s"
                await asyncio.sleep(0.02)
        print(f"revocation seen on both instances after {time.monotonic() - revoked:.3f}s")
