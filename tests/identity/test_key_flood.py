"""2,000 requests with distinct random keys while valid traffic flows."""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
from pathlib import Path

import aiohttp
import pytest

from .identity_support import echo_app, make_key, route, upstream_url


@pytest.mark.slow
async def test_random_key_flood_does_not_starve_valid_traffic(gateway, backend, config):
    srv = await backend(echo_app())
    cfg = config(
        upstreams={"api": {"targets": [upstream_url(srv)]}},
        routes=[route("keys", "api", "/", [{"key_auth": {}}])],
        logging={"level": "warning", "format": "json", "access_log": False},
    )
    gw = await gateway(cfg)
    key, rec = await make_key(Path(cfg["state"]["dir"]), "acme")
    valid = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as s:
        async with s.get(gw.url + "/warm", headers=valid) as r:
            assert r.status == 200  # verified once (bcrypt), cached from here on

        async def one_valid() -> float:
            started = time.monotonic()
            async with s.get(gw.url + "/ok", headers=valid) as r:
                assert r.status == 200
                await r.read()
            return time.monotonic() - started

        baseline = [await one_valid() for _ in range(50)]

        def bogus(i: int) -> str:
            # 1 in 10 uses the real key id with a wrong secret: those reach bcrypt (bounded).
            key_id = rec.key_id if i % 10 == 0 else secrets.token_hex(8)
            return f"gwd_{key_id}_{secrets.token_urlsafe(32)}"

        statuses: list[int] = []
        sem = asyncio.Semaphore(100)

        async def one_bad(i: int) -> None:
            async with (
                sem,
                s.get(gw.url + "/x", headers={"Authorization": f"Bearer {bogus(i)}"}) as r,
            ):
                statuses.append(r.status)
                await r.read()

        latencies: list[float] = []
        flooding = True

        async def valid_traffic() -> None:
            while flooding:
                latencies.append(await one_valid())

        valid_tasks = [asyncio.create_task(valid_traffic()) for _ in range(4)]
        started = time.monotonic()
        await asyncio.gather(*(one_bad(i) for i in range(2000)))
        flood_time = time.monotonic() - started
        flooding = False
        await asyncio.gather(*valid_tasks)
    assert statuses == [401] * 2000
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"\nflood: 2000 bad keys in {flood_time:.2f}s; valid requests during it: "
        f"{len(latencies)}, p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms "
        f"(baseline p50 {statistics.median(baseline) * 1000:.1f} ms)"
    )
    assert len(latencies) >= 50
    assert p99 < 0.5, f"valid requests starved: p99 {p99:.3f}s"
