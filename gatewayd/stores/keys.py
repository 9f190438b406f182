"""API keys: ``<prefix>_<key id>_<secret>``; only a bcrypt hash of the secret is stored.

The :class:`KeyStore` is what the daemon and the CLI use. It keeps the request path cheap:

- a presented key is parsed and length-checked first; an unknown key id is rejected after one
  backend lookup, before any bcrypt;
- bcrypt runs in a thread, with bounded concurrency and a bounded queue (beyond it: rejected);
- after one successful verification the key is served from a bounded, TTL'd cache keyed by a
  keyed BLAKE2b digest of the presented key, so bcrypt is not on the steady-state path;
- revoke and rotate drop the key's cache entries at once, on this instance and (through the
  backend's change feed: a SQLite change table that is polled, or Redis pub/sub) on every other
  process sharing the store; ``on_revoke`` callbacks hear about revocations from either.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import bcrypt

log = logging.getLogger("gatewayd.keys")

DEFAULT_PREFIX = "gwd"
MAX_KEY_LENGTH = 256
KEY_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")  # no "_": it separates the parts of a key
PREFIX_RE = re.compile(r"^[A-Za-z0-9]{1,16}$")
SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


class KeyStoreError(Exception):
    """A user error in a key store operation (unknown key, duplicate id, bad value)."""


class KeyNotFound(KeyStoreError):
    pass


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What is known about a key, without its secret or hash (safe to log and list)."""

    key_id: str
    tenant: str
    scopes: frozenset[str]
    description: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    prefix: str = DEFAULT_PREFIX
    rotated_at: float | None = None

    def active(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "prefix": self.prefix,
            "tenant": self.tenant,
            "scopes": sorted(self.scopes),
            "description": self.description,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "rotated_at": self.rotated_at,
            "status": "revoked"
            if self.revoked_at is not None
            else ("active" if self.active() else "expired"),
        }


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A record with its hashes: the current one and, during a rotation's grace period, the
    previous one (valid until ``old_hash_until``)."""

    record: KeyRecord
    hash: str
    old_hash: str | None = None
    old_hash_until: float | None = None


@dataclass(frozen=True, slots=True)
class Change:
    kind: str  # "revoked" | "rotated" | "created"
    key_id: str


class KeyBackend(Protocol):
    async def get(self, key_id: str) -> StoredKey | None: ...
    async def insert(self, stored: StoredKey) -> None: ...
    async def update(self, stored: StoredKey, change: str) -> None: ...
    async def delete(self, key_id: str) -> None: ...
    async def list(self, tenant: str | None = None) -> list[StoredKey]: ...
    async def watch(self, on_change: Callable[[Change], None]) -> None: ...
    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ParsedKey:
    prefix: str
    key_id: str
    secret: str


def parse_key(presented: str) -> ParsedKey | None:
    """Split ``<prefix>_<key id>_<secret>``; None if it cannot be one of ours."""
    if not presented or len(presented) > MAX_KEY_LENGTH:
        return None
    parts = presented.split("_", 2)
    if len(parts) != 3:
        return None
    prefix, key_id, secret = parts
    if not (PREFIX_RE.match(prefix) and KEY_ID_RE.match(key_id) and SECRET_RE.match(secret)):
        return None
    return ParsedKey(prefix, key_id, secret)


def hash_secret(secret: str, rounds: int) -> str:
    return bcrypt.hashpw(secret.encode(), bcrypt.gensalt(rounds)).decode()


def _check(secret: str, hashed: str) -> bool:
    try:
        return bcrypt.checkpw(secret.encode(), hashed.encode())
    except ValueError:
        return False


class _TTLCache:
    """A bounded LRU of ``digest -> (record, until)``, indexed by key id for invalidation."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[bytes, tuple[KeyRecord, float]] = OrderedDict()
        self.by_key: dict[str, set[bytes]] = {}

    def get(self, digest: bytes, now: float) -> KeyRecord | None:
        hit = self.items.get(digest)
        if hit is None:
            return None
        record, until = hit
        if now >= until:
            self.drop(digest)
            return None
        return record

    def put(self, digest: bytes, record: KeyRecord, until: float) -> None:
        self.items[digest] = (record, until)
        self.items.move_to_end(digest)
        self.by_key.setdefault(record.key_id, set()).add(digest)
        while len(self.items) > self.size:
            self.drop(next(iter(self.items)))

    def drop(self, digest: bytes) -> None:
        hit = self.items.pop(digest, None)
        if hit is not None:
            digests = self.by_key.get(hit[0].key_id)
            if digests is not None:
                digests.discard(digest)
                if not digests:
                    del self.by_key[hit[0].key_id]

    def drop_key(self, key_id: str) -> None:
        for digest in list(self.by_key.get(key_id, ())):
            self.drop(digest)

    def clear(self) -> None:
        self.items.clear()
        self.by_key.clear()


@dataclass(frozen=True, slots=True)
class KeyStoreSettings:
    cache_ttl: float = 300.0
    cache_size: int = 10_000
    negative_ttl: float = 10.0
    bcrypt_rounds: int = 10
    bcrypt_concurrency: int = field(default_factory=lambda: 1 if (os.cpu_count() or 1) <= 2 else 2)
    bcrypt_queue: int = 64
    # Wrong secrets for one key id: at most this many bcrypt checks per window; beyond that,
    # uncached presentations of that id are rejected without bcrypt until the window ends.
    failure_budget: int = 20
    failure_window: float = 60.0


class KeyStore:
    """Keys on a backend (SQLite or Redis), with the verification cache and change feed."""

    def __init__(
        self,
        backend: KeyBackend,
        settings: KeyStoreSettings | None = None,
        events: Callable[[], Any] | None = None,
    ) -> None:
        self.backend = backend
        self.settings = settings or KeyStoreSettings()
        self._events = events
        self._cache = _TTLCache(self.settings.cache_size)
        self._failed: OrderedDict[bytes, float] = OrderedDict()
        self._pepper = secrets.token_bytes(32)  # per process: digests mean nothing elsewhere
        self._bcrypt = asyncio.Semaphore(self.settings.bcrypt_concurrency)
        # Its own small pool: bcrypt never takes more CPU than this, even if callers go away.
        self._pool = ThreadPoolExecutor(self.settings.bcrypt_concurrency, "gatewayd-bcrypt")
        self._waiting = 0
        self._inflight: dict[bytes, asyncio.Future[KeyRecord | None]] = {}
        self._id_failures: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._revoke_callbacks: list[Callable[[str], None]] = []
        self._watch_task: asyncio.Task[None] | None = None
        self.stats = {"cache_hits": 0, "bcrypt_checks": 0, "rejected_busy": 0}

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Follow the backend's change feed (the daemon does; one-shot CLI commands need not)."""
        if self._watch_task is None:
            self._watch_task = asyncio.create_task(self.backend.watch(self._on_change))

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch_task
            self._watch_task = None
        await self.backend.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def on_revoke(self, callback: Callable[[str], None]) -> None:
        """``callback(key_id)`` when a key is revoked, here or on another instance."""
        self._revoke_callbacks.append(callback)

    # -- the request path -----------------------------------------------------------------

    def _digest(self, presented: str) -> bytes:
        return hashlib.blake2b(presented.encode(), key=self._pepper, digest_size=20).digest()

    def cached(self, presented: str) -> KeyRecord | None:
        """The record of a key verified recently and still valid, without awaiting anything;
        None means "not known here": ask :meth:`verify`."""
        if not presented or len(presented) > MAX_KEY_LENGTH:
            return None
        hit = self._cache.get(self._digest(presented), time.time())
        if hit is None or (hit.expires_at is not None and time.time() >= hit.expires_at):
            return None
        self.stats["cache_hits"] += 1
        return hit

    async def verify(self, presented: str) -> KeyRecord | None:
        """The key's record, or None for a malformed, unknown, wrong, expired or revoked key."""
        if not presented or len(presented) > MAX_KEY_LENGTH:
            return None
        now = time.time()
        digest = self._digest(presented)
        record = self._cache.get(digest, now)
        if record is not None:  # verified before: no need to parse it again
            if record.expires_at is not None and now >= record.expires_at:
                self._cache.drop(digest)
                return None
            self.stats["cache_hits"] += 1
            return record
        parsed = parse_key(presented)
        if parsed is None:
            return None
        failed_until = self._failed.get(digest)
        if failed_until is not None:
            if now < failed_until:
                return None
            del self._failed[digest]
        pending = self._inflight.get(digest)
        if pending is not None:  # the same key is being checked: share the answer
            return await asyncio.shield(pending)
        future: asyncio.Future[KeyRecord | None] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            result = await self._verify_slow(parsed, digest)
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning if nobody waits
            raise
        finally:
            del self._inflight[digest]

    async def _verify_slow(self, parsed: ParsedKey, digest: bytes) -> KeyRecord | None:
        stored = await self.backend.get(parsed.key_id)
        now = time.time()
        if stored is None or stored.record.prefix != parsed.prefix:
            return None
        if not stored.record.active(now):
            return None
        hashes: list[tuple[str, float | None]] = [(stored.hash, None)]
        if stored.old_hash and stored.old_hash_until and now < stored.old_hash_until:
            hashes.append((stored.old_hash, stored.old_hash_until))
        failures, window_start = self._id_failures.get(parsed.key_id, (0, now))
        if now - window_start >= self.settings.failure_window:
            failures, window_start = 0, now
        if failures >= self.settings.failure_budget:
            self.stats["rejected_busy"] += 1
            return None
        if self._waiting >= self.settings.bcrypt_queue:
            self.stats["rejected_busy"] += 1
            log.warning("key verification queue full: rejecting", extra={"key_id": parsed.key_id})
            return None
        self._waiting += 1
        try:
            await self._bcrypt.acquire()
        finally:
            self._waiting -= 1
        try:
            self.stats["bcrypt_checks"] += 1
            match = await asyncio.get_running_loop().run_in_executor(
                self._pool, _match_any, parsed.secret, [h for h, _ in hashes]
            )
        finally:
            self._bcrypt.release()
        if match is None:
            self._remember_failure(digest, now)
            self._id_failures[parsed.key_id] = (failures + 1, window_start)
            self._id_failures.move_to_end(parsed.key_id)
            while len(self._id_failures) > self.settings.cache_size:
                self._id_failures.popitem(last=False)
            return None
        until = now + self.settings.cache_ttl
        if stored.record.expires_at is not None:
            until = min(until, stored.record.expires_at)
        grace_end = hashes[match][1]
        if grace_end is not None:
            until = min(until, grace_end)
        # A revocation may have landed while bcrypt ran: only cache what is still current.
        latest = await self.backend.get(parsed.key_id)
        if latest is None or not latest.record.active():
            return None
        self._cache.put(digest, stored.record, until)
        return stored.record

    def _remember_failure(self, digest: bytes, now: float) -> None:
        self._failed[digest] = now + self.settings.negative_ttl
        while len(self._failed) > self.settings.cache_size:
            self._failed.popitem(last=False)

    # -- changes ----------------------------------------------------------------------------

    def _on_change(self, change: Change) -> None:
        if change.kind == "reset":  # the feed was interrupted: forget everything cached
            self._cache.clear()
            return
        self._cache.drop_key(change.key_id)
        if change.kind == "revoked":
            self._fire_revoked(change.key_id)

    def _fire_revoked(self, key_id: str) -> None:
        for callback in list(self._revoke_callbacks):
            try:
                callback(key_id)
            except Exception:
                log.exception("on_revoke callback failed", extra={"key_id": key_id})

    def _publish(self, type_: str, record: KeyRecord) -> None:
        bus = self._events() if self._events is not None else None
        if bus is None:
            return
        payload = {"key_id": record.key_id, "tenant": record.tenant}
        try:
            bus.publish(type_, payload, tenant=record.tenant)
        except Exception:
            log.exception("publishing a key event failed", extra={"event": type_})

    # -- management -------------------------------------------------------------------------

    async def create(
        self,
        tenant: str,
        scopes: frozenset[str] | set[str] | list[str] = frozenset(),
        description: str = "",
        expires_in: float | None = None,
        key_id: str | None = None,
        prefix: str = DEFAULT_PREFIX,
    ) -> tuple[str, KeyRecord]:
        """A new key; returns ``(the full key, shown once, its record)``."""
        if not tenant:
            raise KeyStoreError("a key needs a tenant")
        if not PREFIX_RE.match(prefix):
            raise KeyStoreError("a key prefix is 1-16 letters or digits")
        key_id = key_id or secrets.token_hex(8)
        if not KEY_ID_RE.match(key_id):
            raise KeyStoreError("a key id is 1-64 letters, digits or '-'")
        if expires_in is not None and expires_in <= 0:
            raise KeyStoreError("expiry must be in the future")
        secret = secrets.token_urlsafe(32)
        now = time.time()
        record = KeyRecord(
            key_id=key_id,
            tenant=tenant,
            scopes=frozenset(scopes),
            description=description,
            created_at=now,
            expires_at=now + expires_in if expires_in is not None else None,
            revoked_at=None,
            prefix=prefix,
        )
        hashed = await asyncio.to_thread(hash_secret, secret, self.settings.bcrypt_rounds)
        await self.backend.insert(StoredKey(record, hashed))
        self._publish("key.created", record)
        return f"{prefix}_{key_id}_{secret}", record

    async def get(self, key_id: str) -> KeyRecord | None:
        stored = await self.backend.get(key_id)
        return stored.record if stored else None

    async def list(self, tenant: str | None = None) -> list[KeyRecord]:
        return [s.record for s in await self.backend.list(tenant)]

    async def revoke(self, key_id: str) -> KeyRecord:
        stored = await self._existing(key_id)
        if stored.record.revoked_at is not None:
            return stored.record
        record = replace(stored.record, revoked_at=time.time())
        await self.backend.update(replace(stored, record=record), "revoked")
        self._cache.drop_key(key_id)
        self._fire_revoked(key_id)
        self._publish("key.revoked", record)
        return record

    async def delete(self, key_id: str) -> KeyRecord:
        """Revoke the key (everything a revocation does, on every instance), then forget its
        record: it is no longer listed and its id may be used again."""
        record = await self.revoke(key_id)
        await self.backend.delete(key_id)
        self._publish("key.deleted", record)
        return record

    async def rotate(self, key_id: str, grace: float = 3600.0) -> tuple[str, KeyRecord]:
        """A new secret for the key; the old one stays valid for ``grace`` seconds."""
        stored = await self._existing(key_id)
        if not stored.record.active():
            raise KeyStoreError(f"key '{key_id}' is revoked or expired and cannot be rotated")
        secret = secrets.token_urlsafe(32)
        hashed = await asyncio.to_thread(hash_secret, secret, self.settings.bcrypt_rounds)
        now = time.time()
        record = replace(stored.record, rotated_at=now)
        new = StoredKey(
            record,
            hashed,
            old_hash=stored.hash if grace > 0 else None,
            old_hash_until=now + grace if grace > 0 else None,
        )
        await self.backend.update(new, "rotated")
        self._cache.drop_key(key_id)
        self._publish("key.rotated", record)
        return f"{record.prefix}_{key_id}_{secret}", record

    async def _existing(self, key_id: str) -> StoredKey:
        stored = await self.backend.get(key_id)
        if stored is None:
            raise KeyNotFound(f"no key with id '{key_id}'")
        return stored


def _match_any(secret: str, hashes: list[str]) -> int | None:
    for i, hashed in enumerate(hashes):
        if _check(secret, hashed):
            return i
    return None


async def open_key_store(
    state: Any,
    events: Callable[[], Any] | None = None,
    settings: KeyStoreSettings | None = None,
) -> KeyStore:
    """The key store for a ``state`` config section: Redis when ``backend: redis``, else SQLite
    at ``<state.dir>/keys.sqlite3`` (created on first use)."""
    backend: KeyBackend
    if state.backend == "redis":
        from gatewayd.stores.keys_redis import RedisKeyBackend

        backend = RedisKeyBackend(state.redis_url)
    else:
        from gatewayd.stores.keys_sqlite import SQLiteKeyBackend

        backend = SQLiteKeyBackend(state.dir / "keys.sqlite3")
    return KeyStore(backend, settings, events)
