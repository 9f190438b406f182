"""What the dispatcher counts per request (gatewayd/proxy/dispatch.py), through the real daemon:
body size histograms by route, SSE streams open, requests and limit hits per tenant, and the
caller in the access log line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
from aiohttp import web
from support import upstream_url

from gatewayd.stores.keys import KeyStore, KeyStoreSettings
from gatewayd.stores.keys_sqlite import SQLiteKeyBackend


async def make_key(state_dir: Path, tenant: str) -> tuple[str, str]:
    store = KeyStore(SQLiteKeyBackend(state_dir / "keys.sqlite3"), KeyStoreSettings())
    try:
        key, record = await store.create(tenant)
    finally:
        await store.close()
    return key, record.key_id


def app(release: asyncio.Event) -> web.Application:
    async def sized(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"x" * 5000)

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: one\n\n")
        await release.wait()
        await resp.write(b"data: two\n\n")
        await resp.write_eof()
        return resp

    application = web.Application()
    application.router.add_route("*", "/events", events)
    application.router.add_route("*", "/{tail:.*}", sized)
    return application


async def test_sizes_streams_tenants_and_the_access_line(gateway, backend, config, tmp_path):
    release = asyncio.Event()
    srv = await backend(app(release))
    cfg = config(
        upstreams={"api": {"targets": [upstream_url(srv)]}},
        routes=[
            {
                "name": "api",
                "match": {"path": "/"},
                "upstream": "api",
                "plugins": [
                    {"key_auth": {}},
                    {"rate_limit": {"quota": "2/day", "key": "tenant"}},
                ],
            }
        ],
    )
    cfg["metrics"] = {"top_tenants": 1}
    gw = await gateway(cfg)
    state = Path(cfg["state"]["dir"])
    acme, acme_id = await make_key(state, "acme")
    globex, _ = await make_key(state, "globex")
    auth = {"Authorization": f"Bearer {acme}"}
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/upload", data=b"y" * 3000, headers=auth) as r:
            assert r.status == 200
            assert len(await r.read()) == 5000
        async with s.get(gw.url + "/events", headers=auth) as r:
            assert r.status == 200
            assert await r.content.readline() == b"data: one\n"
            assert await gw.metric("gatewayd_sse_streams_open", route="api") == 1
            release.set()
            await r.read()
        for _ in range(2):
            async with s.get(gw.url + "/more", headers=auth) as r:
                assert r.status == 429  # acme's quota of 2 is spent
        async with s.get(gw.url + "/g", headers={"Authorization": f"Bearer {globex}"}) as r:
            assert r.status == 200
    metric = gw.metric
    assert await metric("gatewayd_sse_streams_open", route="api") == 0
    bucket = "gatewayd_request_size_bytes_bucket"
    assert await metric(bucket, le="1024.0", route="api") == 4  # no body: 0 bytes
    assert await metric(bucket, le="4096.0", route="api") == 5
    assert await metric("gatewayd_request_size_bytes_sum", route="api") == 3000
    assert await metric("gatewayd_response_size_bytes_bucket", le="4096.0", route="api") == 3
    assert await metric("gatewayd_response_size_bytes_bucket", le="16384.0", route="api") == 5
    assert await metric("gatewayd_tenant_requests_total", tenant="acme") == 4
    assert await metric("gatewayd_tenant_limited_total", tenant="acme") == 2
    assert await metric("gatewayd_tenant_requests_total", tenant="other") == 1  # top_tenants: 1
    assert await metric("gatewayd_tenant_limited_total", tenant="other") == 0
    assert await metric("gatewayd_tenant_requests_total", tenant="globex") == 0  # not exported
    entries: list[dict] = []
    for _ in range(40):  # access lines are written in batches, at most 200 ms apart
        entries = [json.loads(x) for x in gw.logs().splitlines() if '"gatewayd.access"' in x]
        if len(entries) >= 5:
            break
        await asyncio.sleep(0.05)
    assert [(e["tenant"], e["key_id"]) for e in entries[:4]] == [("acme", acme_id)] * 4
    assert entries[4]["tenant"] == "globex"
    assert acme not in gw.logs()
