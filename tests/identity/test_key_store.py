"""The key store on its own: verification, cache, revoke/rotate, and the change feed."""

from __future__ import annotations

import asyncio
import time

import pytest

from gatewayd.stores.keys import KeyNotFound, parse_key

from .identity_support import sqlite_store


async def test_create_verify_and_cache(tmp_path):
    store = sqlite_store(tmp_path)
    key, record = await store.create("acme", {"api:read"}, "ci", key_id="ci-1")
    assert key.startswith("gwd_ci-1_") and parse_key(key) is not None
    assert record.scopes == frozenset({"api:read"})
    for _ in range(50):
        got = await store.verify(key)
        assert got is not None and got.tenant == "acme"
    assert store.stats["bcrypt_checks"] == 1  # once; then the cache
    assert store.stats["cache_hits"] == 49
    await store.close()


async def test_rejections_without_bcrypt(tmp_path):
    store = sqlite_store(tmp_path)
    key, _ = await store.create("acme", key_id="k1")
    assert await store.verify("gwd_nope_" + "x" * 43) is None  # unknown id
    assert await store.verify("not a key") is None
    assert await store.verify("gwd_k1_short") is None  # malformed secret
    assert await store.verify("abc_k1_" + key.split("_", 2)[2]) is None  # wrong prefix
    assert await store.verify(key + "x" * 300) is None  # too long
    assert store.stats["bcrypt_checks"] == 0
    wrong = "gwd_k1_" + "A" * 43
    assert await store.verify(wrong) is None
    assert await store.verify(wrong) is None  # remembered: no second bcrypt
    assert store.stats["bcrypt_checks"] == 1
    await store.close()


async def test_expired_key(tmp_path):
    store = sqlite_store(tmp_path)
    key, _ = await store.create("acme", expires_in=0.3)
    assert await store.verify(key) is not None
    await asyncio.sleep(0.35)
    assert await store.verify(key) is None  # also from the cache
    await store.close()


async def test_revoke_invalidates_cache_and_notifies(tmp_path):
    store = sqlite_store(tmp_path)
    revoked: list[str] = []
    store.on_revoke(revoked.append)
    key, rec = await store.create("acme")
    assert await store.verify(key) is not None
    await store.revoke(rec.key_id)
    assert await store.verify(key) is None
    assert revoked == [rec.key_id]
    assert (await store.get(rec.key_id)).revoked_at is not None
    try:
        await store.revoke("missing")
    except KeyNotFound:
        pass
    else:
        raise AssertionError("revoking an unknown key must fail")
    await store.close()


async def test_rotate_keeps_old_secret_for_grace(tmp_path):
    store = sqlite_store(tmp_path)
    old, rec = await store.create("acme")
    assert await store.verify(old) is not None
    new, _ = await store.rotate(rec.key_id, grace=0.5)
    assert new != old
    assert await store.verify(new) is not None
    assert await store.verify(old) is not None  # within grace
    await asyncio.sleep(0.6)
    assert await store.verify(old) is None  # grace over (cache entry bounded by it too)
    assert await store.verify(new) is not None
    await store.close()


async def test_listing_has_no_secrets(tmp_path):
    store = sqlite_store(tmp_path)
    key, _ = await store.create("acme", key_id="k1")
    await store.create("globex", key_id="k2")
    listed = [r.to_json() for r in await store.list()]
    assert [r["key_id"] for r in listed] == ["k1", "k2"]
    assert key.split("_", 2)[2] not in repr(listed) and "$2b$" not in repr(listed)
    assert [r.key_id for r in await store.list("globex")] == ["k2"]
    await store.close()


async def test_revocation_from_another_process_reaches_a_watching_store(tmp_path):
    daemon_side = sqlite_store(tmp_path)
    await daemon_side.start()
    revoked: list[str] = []
    daemon_side.on_revoke(revoked.append)
    cli_side = sqlite_store(tmp_path)
    key, rec = await cli_side.create("acme")
    assert await daemon_side.verify(key) is not None
    await cli_side.revoke(rec.key_id)
    started = time.monotonic()
    while await daemon_side.verify(key) is not None:
        assert time.monotonic() - started < 1.0, "revocation not seen within 1 s"
        await asyncio.sleep(0.02)
    assert revoked == [rec.key_id]
    await cli_side.close()
    await daemon_side.close()


async def test_bcrypt_runs_off_the_loop(tmp_path):
    store = sqlite_store(tmp_path, bcrypt_rounds=12)
    key, _ = await store.create("acme")
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    assert await store.verify(key) is not None
    took = time.monotonic() - started
    done = True
    await task
    # bcrypt(12) takes ~0.2 s; the loop kept ticking meanwhile.
    assert ticks >= int(took / 0.005 * 0.5), (ticks, took)
    await store.close()


async def test_wrong_secrets_for_one_key_id_have_a_bcrypt_budget(tmp_path):
    store = sqlite_store(tmp_path, failure_budget=5)
    key, rec = await store.create("acme")
    assert await store.verify(key) is not None  # cached before the attack
    for i in range(20):
        assert await store.verify(f"gwd_{rec.key_id}_{'Z' * 40}{i:03d}") is None
    assert store.stats["bcrypt_checks"] == 1 + 5
    assert await store.verify(key) is not None  # the cached good key keeps working
    await store.close()


async def test_delete_revokes_and_forgets_the_record(tmp_path):
    store = sqlite_store(tmp_path, bcrypt_rounds=4)
    revoked: list[str] = []
    store.on_revoke(revoked.append)
    try:
        key, record = await store.create("acme", frozenset())
        assert await store.verify(key) is not None
        await store.delete(record.key_id)
        assert revoked == [record.key_id]
        assert store.cached(key) is None and await store.verify(key) is None
        assert await store.get(record.key_id) is None
        assert record.key_id not in [r.key_id for r in await store.list()]
        with pytest.raises(KeyNotFound):
            await store.delete(record.key_id)
        again, _ = await store.create("acme", frozenset(), key_id=record.key_id)  # id free again
        assert await store.verify(again) is not None
    finally:
        await store.close()
