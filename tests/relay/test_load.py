"""Many concurrent requests through one peer connection."""

from __future__ import annotations

import asyncio
import collections

import aiohttp
from aiohttp import web
from relay_helpers import make_key, relay_config, relay_stats, state_dir, upstream_url


async def test_concurrent_small_requests_through_one_connection(
    tmp_path, gateway, config, backend, peer_proc
):
    async def small(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 100)

    app = web.Application()
    app.router.add_get("/{tail:.*}", small)
    srv = await backend(app)
    gw = await gateway(relay_config(tmp_path, config, heartbeat={"interval": "5s", "timeout": "10s"}))
    key, _ = await make_key(state_dir(gw), "relay:*")
    peer = await peer_proc(gw, "bench", key, upstream_url(srv))
    statuses: collections.Counter[int] = collections.Counter()
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def worker() -> None:
            for _ in range(100):
                async with s.get(gw.url + "/peer/bench/small") as r:
                    await r.read()
                    statuses[r.status] += 1

        await asyncio.gather(*(worker() for _ in range(64)))
    stats = await relay_stats(gw)
    print(statuses, stats["connects"], stats["disconnects"])
    print([l for l in gw.logs().splitlines() if "relay" in l][-20:])
    print(peer.logs()[-3000:])
    assert statuses == {200: 6400}
    assert stats["connects"] == 1
