"""gatewayd/plugins/cache/store.py: what an entry keeps in Redis, and for how long."""

from __future__ import annotations

import pytest
import redis.asyncio as redis
from multidict import CIMultiDict

from gatewayd.plugins.cache.policy import StorePolicy, make_entry
from gatewayd.plugins.cache.store import MemoryCacheStore, RedisCacheStore, full_key

NOW = 1_800_000_000.0
LINES = [
    ("Date", "Fri, 15 Jan 2027 08:00:00 GMT"),
    ("Cache-Control", "s-maxage=60"),
    ("Cache-Control", "stale-if-error=30"),
    ("Last-Modified", "Fri, 15 Jan 2027 07:00:00 GMT"),
    ("ETag", '"v1"'),
    ("Vary", "Accept"),
]


def entry():
    e = make_entry(200, CIMultiDict(LINES), b"body", StorePolicy(), False, NOW)
    assert e is not None
    e.retain = 86400.0  # use_stale_max
    return e


@pytest.mark.redis
async def test_redis_keeps_every_field_and_the_entry_outlives_its_stale_windows(redis_server):
    client = redis.from_url(redis_server.url)
    try:
        store = RedisCacheStore(client, "t:")
        e = entry()
        key = full_key("/a", "h")
        await store.set("/a", key, e)
        got = await store.get(key)
        assert got == e.__class__(**{**_fields(e), "size": got.size})
        assert (got.s_maxage, got.modified_at, got.date_at, got.retain) == (
            True,
            e.modified_at,
            e.date_at,
            86400.0,
        )
        assert got.forbids_stale and got.stale_if_error == 30
        # kept for freshness + the longest stale window (use_stale_max here) + a minute
        assert 86400 * 1000 < await client.pttl("t:e:" + key) <= (60 + 86400 + 60) * 1000
    finally:
        await client.aclose()


def test_memory_store_round_trip():
    store = MemoryCacheStore(1 << 20)
    e = entry()
    store.set("/a", full_key("/a", "h"), e)
    assert store.get(full_key("/a", "h")) is e and store.vary("/a") == ("accept",)


def _fields(e):
    return {name: getattr(e, name) for name in e.__dataclass_fields__}
