"""The Redis key backend (``state.backend: redis``): keys shared by every gateway instance.

A key is one JSON string at ``gatewayd:key:<id>``; ``gatewayd:keys`` indexes the ids. Every
revoke/rotate is published on ``gatewayd:keys:changes``; each daemon subscribes and drops the
key from its verification cache at once. If the subscription breaks, the daemon clears its whole
cache (it may have missed a revocation) and resubscribes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

from gatewayd.stores.keys import Change, KeyRecord, KeyStoreError, StoredKey

log = logging.getLogger("gatewayd.keys")
NS = "gatewayd"
CHANNEL = f"{NS}:keys:changes"
INDEX = f"{NS}:keys"


def _key(key_id: str) -> str:
    return f"{NS}:key:{key_id}"


def _dump(s: StoredKey) -> str:
    r = s.record
    return json.dumps(
        {
            "key_id": r.key_id,
            "prefix": r.prefix,
            "tenant": r.tenant,
            "scopes": sorted(r.scopes),
            "description": r.description,
            "created_at": r.created_at,
            "expires_at": r.expires_at,
            "revoked_at": r.revoked_at,
            "rotated_at": r.rotated_at,
            "hash": s.hash,
            "old_hash": s.old_hash,
            "old_hash_until": s.old_hash_until,
        }
    )


def _load(raw: str | bytes) -> StoredKey:
    d = json.loads(raw)
    record = KeyRecord(
        key_id=d["key_id"],
        tenant=d["tenant"],
        scopes=frozenset(d["scopes"]),
        description=d["description"],
        created_at=d["created_at"],
        expires_at=d["expires_at"],
        revoked_at=d["revoked_at"],
        prefix=d["prefix"],
        rotated_at=d.get("rotated_at"),
    )
    return StoredKey(record, d["hash"], d.get("old_hash"), d.get("old_hash_until"))


class RedisKeyBackend:
    def __init__(self, url: str) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:  # pragma: no cover - depends on the install
            raise KeyStoreError(
                "state.backend is redis but the redis package is missing: "
                "pip install 'gatewayd[redis]'"
            ) from None
        self.url = url
        self.redis: Any = aioredis.from_url(url, decode_responses=True)
        self.origin = secrets.token_hex(8)

    async def get(self, key_id: str) -> StoredKey | None:
        raw = await self.redis.get(_key(key_id))
        return _load(raw) if raw else None

    async def insert(self, stored: StoredKey) -> None:
        key_id = stored.record.key_id
        if not await self.redis.set(_key(key_id), _dump(stored), nx=True):
            raise KeyStoreError(f"a key with id '{key_id}' exists")
        await self.redis.sadd(INDEX, key_id)

    async def update(self, stored: StoredKey, change: str) -> None:
        key_id = stored.record.key_id
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(_key(key_id), _dump(stored))
            pipe.publish(
                CHANNEL, json.dumps({"kind": change, "key_id": key_id, "origin": self.origin})
            )
            await pipe.execute()

    async def delete(self, key_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(_key(key_id))
            pipe.srem(INDEX, key_id)
            pipe.publish(  # other instances drop it from their caches as for a revocation
                CHANNEL, json.dumps({"kind": "revoked", "key_id": key_id, "origin": self.origin})
            )
            await pipe.execute()

    async def list(self, tenant: str | None = None) -> list[StoredKey]:
        ids = sorted(await self.redis.smembers(INDEX))
        if not ids:
            return []
        raws = await self.redis.mget([_key(i) for i in ids])
        out = [_load(r) for r in raws if r]
        if tenant is not None:
            out = [s for s in out if s.record.tenant == tenant]
        return sorted(out, key=lambda s: s.record.created_at)

    async def watch(self, on_change: Callable[[Change], None]) -> None:
        delay = 0.1
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                on_change(Change("reset", ""))  # anything cached before now may be stale
                delay = 0.1
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    try:
                        data = json.loads(message["data"])
                        kind, key_id, origin = data["kind"], data["key_id"], data.get("origin")
                    except (ValueError, KeyError, TypeError):
                        continue
                    if origin != self.origin:
                        on_change(Change(kind, key_id))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                on_change(Change("reset", ""))
                log.warning("key change feed lost; retrying", extra={"error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def close(self) -> None:
        await self.redis.aclose()
