"""The rate-limit memory store is bounded by its entry count, whatever the number of clients.

Over HTTP, client IPs come from the socket, so a real test with a million source addresses is
out of reach; the HTTP test keys by ``header:X-Client`` (same store, same code path) and sends
distinct values over keep-alive connections. The per-entry cost is measured in-process.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from support import rss_bytes, upstream_url
from traffic_helpers import Counting, route

from gatewayd.stores.memory import MemoryLimiter


def _rss_self() -> int:
    import os

    return rss_bytes(os.getpid())


def test_memory_limiter_is_bounded_by_max_entries():
    limiter = MemoryLimiter(50_000)
    for i in range(200_000):
        limiter.gcra(f"0:ip:10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 0.1, 10)
    assert len(limiter) == 50_000
    assert limiter.evictions == 150_000
    # The newest keys are kept, the oldest dropped.
    d = limiter.gcra("0:ip:10.3.13.63", 0.1, 10)  # i = 199999: already used once
    assert d.remaining == 8


def test_one_million_distinct_ips_in_process_stay_within_the_bound():
    """1M distinct IPs through the store: RSS stops growing once max_entries is reached."""
    limiter = MemoryLimiter(100_000)
    samples = []
    for phase in range(5):
        for i in range(phase * 200_000, (phase + 1) * 200_000):
            limiter.gcra(f"0:ip:10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 0.1, 10)
        samples.append(_rss_self())
    assert len(limiter) == 100_000
    # Documented bound: ~400 bytes per entry (key, float, LRU links, allocator slack).
    assert samples[-1] - samples[0] < 100_000 * 400


@pytest.mark.slow
async def test_many_distinct_clients_over_http_leave_rss_bounded(gateway, backend, config):
    counting = Counting()
    srv = await backend(counting.app)
    plugin = {"rate": "1/min", "burst": 1, "key": "header:X-Client", "max_entries": 8_000}
    gw = await gateway(
        config(
            upstreams={"api": {"targets": [upstream_url(srv)]}},
            routes=[route(plugins=[{"rate_limit": plugin}])],
            logging={"level": "warning", "format": "json", "access_log": False},
        )
    )
    counter = iter(range(10**9))

    async def send(n: int) -> None:
        conn = aiohttp.TCPConnector(limit=32)
        async with aiohttp.ClientSession(connector=conn) as s:

            async def worker() -> None:
                for _ in range(n // 32):
                    async with s.get(gw.url + "/x", headers={"X-Client": f"c{next(counter)}"}) as r:
                        assert r.status == 200
                        await r.read()

            await asyncio.gather(*(worker() for _ in range(32)))

    await send(16_000)  # the store is full (8k entries) from here on
    rss_full = rss_bytes(gw.pid)
    await send(32_000)  # 32k more distinct clients: without the bound, ~+10 MB
    rss_after = rss_bytes(gw.pid)
    growth = rss_after - rss_full
    print(
        f"RSS full store: {rss_full / 1e6:.1f} MB, after 32k more clients: +{growth / 1e6:.2f} MB"
    )
    assert growth < 6 * 1024 * 1024
