"""Budgets of the Redis limiter (gatewayd.stores.redis) against a real redis-server: one script
checks and adds every counter or none, windows expire a second after they end, adjust lands in
the window it names."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from support import RedisServer

from gatewayd.stores.redis import RedisLimiter, StoreError, connect

pytestmark = pytest.mark.redis


@pytest.fixture
async def limiter(redis_server: RedisServer) -> AsyncIterator[RedisLimiter]:
    client = connect(redis_server.url)
    yield RedisLimiter(client, "t:")
    await client.aclose()


async def fresh_window(period: float, margin: float = 0.3) -> None:
    now = time.time()
    end = (int(now // period) + 1) * period
    if end - now < margin:
        await asyncio.sleep(end - now + 0.01)


async def test_reserve_adds_to_every_counter_or_to_none(limiter: RedisLimiter) -> None:
    await fresh_window(60)
    r = await limiter.reserve([("a", 100, 60, 70), ("b", 10, 60, 1)])
    assert r.allowed and r.used == [70, 1] and r.refused == []
    assert r.windows == [int(time.time() // 60)] * 2
    r = await limiter.reserve([("a", 100, 60, 31), ("b", 10, 60, 1)])
    assert not r.allowed and r.refused == [0] and r.used == [70, 1]
    r = await limiter.reserve([("a", 100, 60, 30), ("b", 10, 60, 1)])
    assert r.allowed and r.used == [100, 2]
    with pytest.raises(ValueError):
        await limiter.reserve([("a", 10, 60, 1), ("a", 20, 60, 1)])


async def test_counters_expire_after_their_window(limiter: RedisLimiter) -> None:
    await fresh_window(60)
    r = await limiter.reserve([("a", 100, 60, 5)])
    ttl = await limiter.client.pttl(f"t:a:{r.windows[0]}")
    assert 1000 < ttl <= r.resets[0] * 1000 + 1001
    await limiter.adjust([("fresh", 60, -1, 3)])  # made by adjust: expires as well
    window = int(time.time() // 60)
    assert 0 < await limiter.client.pttl(f"t:fresh:{window}") <= 61_000


async def test_adjust_refunds_and_tops_up_never_below_zero(limiter: RedisLimiter) -> None:
    await fresh_window(60)
    r = await limiter.reserve([("a", 100, 60, 80)])
    await limiter.adjust([("a", 60, r.windows[0], -50)])
    assert (await limiter.reserve([("a", 100, 60, 70)])).used == [100]
    await limiter.adjust([("a", 60, r.windows[0], -1000)])
    assert (await limiter.reserve([("a", 100, 60, 0)])).used == [0]
    await limiter.adjust([("a", 60, r.windows[0], 120)])
    over = await limiter.reserve([("a", 100, 60, 1)])
    assert not over.allowed and over.used == [120]


async def test_a_settle_lands_in_its_own_window(limiter: RedisLimiter) -> None:
    await fresh_window(1, 0.5)
    first = await limiter.reserve([("a", 10, 1, 10)])
    assert first.allowed and not (await limiter.reserve([("a", 10, 1, 1)])).allowed
    await asyncio.sleep((first.windows[0] + 1) - time.time() + 0.01)
    second = await limiter.reserve([("a", 10, 1, 4)])
    assert second.allowed and second.used == [4]
    assert second.windows[0] == first.windows[0] + 1
    await limiter.adjust([("a", 1, first.windows[0], -10), ("a", 1, first.windows[0], 50)])
    assert (await limiter.reserve([("a", 10, 1, 0)])).used == [4]


async def test_concurrent_reservations_never_overshoot(limiter: RedisLimiter) -> None:
    await fresh_window(60, 5)
    results = await asyncio.gather(
        *(limiter.reserve([("n", 1000, 60, 7), (f"k{i % 3}", 10**6, 60, 7)]) for i in range(300))
    )
    admitted = sum(r.allowed for r in results)
    assert admitted == 1000 // 7
    assert (await limiter.reserve([("n", 1000, 60, 0)])).used == [admitted * 7]


async def test_store_down_is_a_store_error(redis_server: RedisServer) -> None:
    client = connect(redis_server.url)
    redis_server.stop()
    try:
        with pytest.raises(StoreError):
            await RedisLimiter(client, "t:").reserve([("a", 10, 60, 1)])
        with pytest.raises(StoreError):
            await RedisLimiter(client, "t:").adjust([("a", 60, -1, 1)])
    finally:
        await client.aclose()
