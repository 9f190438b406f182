"""The catalog: the providers and models added through ``/_admin/llm`` (not the YAML's), stored.

Two records, kept as JSON:

- a **provider** (``provider:<id>``): its kind, the kind's config *without* its secret fields,
  and those fields sealed (``secrets``: field -> token of :mod:`gatewayd_llm.sealing`);
- a **model** (``model:<name>``): its deployments (``DeploymentConfig`` as given), fallbacks,
  price, and the provider that made it (deleted with it).

Where they live follows ``state.backend``: ``memory`` -> SQLite at
``<state_dir>/llm/catalog.sqlite3`` (WAL; one thread of the store's own does every read and
write, off the event loop); ``redis`` -> the hashes ``gatewayd:llm:catalog:providers`` and
``...:models``, the counter ``...:version`` and the channel ``...:changes``, shared by every
instance. Every change is one transaction that bumps the version, so a reader that sees the same
version has the same catalog (:meth:`CatalogStore.version` is what the instances poll).

For ``gatewayd llm rekey``: :meth:`CatalogStore.sealed` lists every sealed value and
:meth:`CatalogStore.reseal` swaps them, compare-and-set, all or nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

__all__ = [
    "Catalog",
    "CatalogConflict",
    "CatalogStore",
    "ModelRecord",
    "ProviderRecord",
    "RedisCatalogStore",
    "SqliteCatalogStore",
    "Writes",
    "open_store",
]

R = TypeVar("R")
Table = Literal["providers", "models"]
# What a transaction writes: (table, key) -> the record's JSON (None: delete it).
Writes = dict[tuple[Table, str], dict[str, Any] | None]

PREFIX = "gatewayd:llm:catalog:"
CHANNEL = PREFIX + "changes"


class CatalogConflict(Exception):
    """A compare-and-set found another value than the one expected: nothing was written."""


@dataclass(frozen=True, slots=True)
class ProviderRecord:
    id: str
    kind: str
    config: dict[str, Any]  # the kind's config without ``kind`` and without the secret fields
    secrets: dict[str, str] = field(default_factory=dict)  # field -> sealed token
    created: float = 0.0
    updated: float = 0.0
    version: int = 1
    rotated: float | None = None  # wall clock of the last credential rotation
    grace: float = 0.0  # seconds the secret before that rotation stays usable after it

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "config": self.config,
            "secrets": self.secrets,
            "created": self.created,
            "updated": self.updated,
            "version": self.version,
            "rotated": self.rotated,
            "grace": self.grace,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProviderRecord:
        return cls(
            id=str(data["id"]),
            kind=str(data["kind"]),
            config=dict(data.get("config") or {}),
            secrets={str(k): str(v) for k, v in (data.get("secrets") or {}).items()},
            created=float(data.get("created") or 0.0),
            updated=float(data.get("updated") or 0.0),
            version=int(data.get("version") or 1),
            rotated=None if data.get("rotated") is None else float(data["rotated"]),
            grace=float(data.get("grace") or 0.0),
        )


@dataclass(frozen=True, slots=True)
class ModelRecord:
    name: str
    deployments: list[dict[str, Any]]  # each a DeploymentConfig as given (validated)
    fallbacks: list[str] = field(default_factory=list)
    price: dict[str, Any] | None = None  # a PriceConfig as given
    provider: str | None = None  # the provider that made it (deleted with it)
    created: float = 0.0
    updated: float = 0.0
    version: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "deployments": self.deployments,
            "fallbacks": self.fallbacks,
            "price": self.price,
            "provider": self.provider,
            "created": self.created,
            "updated": self.updated,
            "version": self.version,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelRecord:
        return cls(
            name=str(data["name"]),
            deployments=[dict(d) for d in data.get("deployments") or []],
            fallbacks=[str(f) for f in data.get("fallbacks") or []],
            price=None if data.get("price") is None else dict(data["price"]),
            provider=None if data.get("provider") is None else str(data["provider"]),
            created=float(data.get("created") or 0.0),
            updated=float(data.get("updated") or 0.0),
            version=int(data.get("version") or 1),
        )


@dataclass(frozen=True, slots=True)
class Catalog:
    """The whole catalog at one version."""

    version: int = 0
    providers: dict[str, ProviderRecord] = field(default_factory=dict)
    models: dict[str, ModelRecord] = field(default_factory=dict)

    @classmethod
    def decode(cls, version: int, tables: dict[Table, dict[str, dict[str, Any]]]) -> Catalog:
        return cls(
            version,
            {k: ProviderRecord.from_json(v) for k, v in tables.get("providers", {}).items()},
            {k: ModelRecord.from_json(v) for k, v in tables.get("models", {}).items()},
        )

    def provider_models(self, provider: str) -> list[str]:
        return [name for name, m in self.models.items() if m.provider == provider]


def stamp(record: ProviderRecord | ModelRecord, old: ProviderRecord | ModelRecord | None) -> Any:
    """``record`` with its created/updated/version set from the record it replaces."""
    now = time.time()
    if old is None:
        return replace(record, created=now, updated=now, version=1)
    return replace(record, created=old.created, updated=now, version=old.version + 1)


def record_id(provider: str) -> str:
    return f"provider:{provider}"


# -- the stores --------------------------------------------------------------------------------


class CatalogStore(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def version(self) -> int:
        """The catalog's version now (bumped by every change)."""
        ...

    async def load(self) -> Catalog: ...

    async def transact(self, change: Callable[[Catalog], tuple[Writes, R]]) -> tuple[R, int]:
        """Run ``change`` on the catalog now and write what it returns, atomically (``change``
        may run more than once when another writer got in between; it raises to write nothing);
        its result and the new version."""
        ...

    def changes(self) -> AsyncIterator[None]:
        """Yields at least every 250 ms, and as soon as another instance says it changed
        something (the caller compares :meth:`version`)."""
        ...

    async def sealed(self) -> list[tuple[str, str, str]]:
        """Every sealed value: (record id, field, token)."""
        ...

    async def reseal(self, changes: Sequence[tuple[str, str, str, str]]) -> None:
        """Replace each (record id, field, old token, new token), all or nothing: raises
        :class:`CatalogConflict` (writing nothing) when a value is not ``old token`` now."""
        ...


async def _sealed(store: CatalogStore) -> list[tuple[str, str, str]]:
    catalog = await store.load()
    return [
        (record_id(p.id), name, token)
        for p in catalog.providers.values()
        for name, token in sorted(p.secrets.items())
    ]


def _reseal_writes(
    catalog: Catalog, changes: Sequence[tuple[str, str, str, str]]
) -> tuple[Writes, None]:
    updated: dict[str, ProviderRecord] = {}
    for rid, name, old, new in changes:
        kind, _, pid = rid.partition(":")
        record = updated.get(pid) or catalog.providers.get(pid)
        if kind != "provider" or record is None:
            raise CatalogConflict(f"{rid}: no such record")
        if record.secrets.get(name) != old:
            raise CatalogConflict(f"{rid}.{name}: the sealed value changed meanwhile")
        updated[pid] = replace(record, secrets={**record.secrets, name: new})
    return {("providers", pid): r.to_json() for pid, r in updated.items()}, None


async def _poll(store: CatalogStore, period: float = 0.25) -> AsyncIterator[None]:
    while True:
        await asyncio.sleep(period)
        yield None


class SqliteCatalogStore:
    """``<state_dir>/llm/catalog.sqlite3``: tables ``records(tbl, key, data)`` and ``meta``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="llm-catalog")
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def _run(self, fn: Callable[[], R]) -> R:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # 0600 before SQLite opens it: its -wal and -shm files take the database file's mode.
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        with contextlib.suppress(OSError):
            self.path.chmod(0o600)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.execute(
            "CREATE TABLE IF NOT EXISTS records (tbl TEXT NOT NULL, key TEXT NOT NULL,"
            " data TEXT NOT NULL, PRIMARY KEY (tbl, key))"
        )
        db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
        db.execute("INSERT OR IGNORE INTO meta (k, v) VALUES ('version', 0)")
        self._db = db

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the catalog store is not started")
        return self._db

    async def start(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._conn().close)
            self._db = None
        self._pool.shutdown(wait=False)

    def _version(self, db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT v FROM meta WHERE k = 'version'").fetchone()[0])

    def _load(self, db: sqlite3.Connection) -> Catalog:
        tables: dict[Table, dict[str, dict[str, Any]]] = {"providers": {}, "models": {}}
        for tbl, key, data in db.execute("SELECT tbl, key, data FROM records"):
            if tbl in tables:
                tables[tbl][key] = json.loads(data)
        return Catalog.decode(self._version(db), tables)

    async def version(self) -> int:
        return await self._run(lambda: self._version(self._conn()))

    async def load(self) -> Catalog:
        return await self._run(lambda: self._load(self._conn()))

    async def transact(self, change: Callable[[Catalog], tuple[Writes, R]]) -> tuple[R, int]:
        def run() -> tuple[R, int]:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                writes, result = change(self._load(db))
                for (tbl, key), data in writes.items():
                    if data is None:
                        db.execute("DELETE FROM records WHERE tbl = ? AND key = ?", (tbl, key))
                    else:
                        db.execute(
                            "INSERT OR REPLACE INTO records (tbl, key, data) VALUES (?, ?, ?)",
                            (tbl, key, json.dumps(data, separators=(",", ":"))),
                        )
                if writes:
                    db.execute("UPDATE meta SET v = v + 1 WHERE k = 'version'")
                version = self._version(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result, version

        async with self._lock:
            return await self._run(run)

    def changes(self) -> AsyncIterator[None]:
        return _poll(self)

    async def sealed(self) -> list[tuple[str, str, str]]:
        return await _sealed(self)

    async def reseal(self, changes: Sequence[tuple[str, str, str, str]]) -> None:
        await self.transact(lambda catalog: _reseal_writes(catalog, changes))


class RedisCatalogStore:
    """Shared by every instance: hashes of JSON records, a version counter bumped (WATCHed) by
    each change, and a message on :data:`CHANNEL` after it."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    async def start(self) -> None:
        return None  # nothing to open: Redis being down now is retried by the reader

    async def close(self) -> None:
        return None  # the client is the process's (services.stores.redis())

    async def version(self) -> int:
        return int(await self.redis.get(PREFIX + "version") or 0)

    async def _read(self, client: Any) -> Catalog:
        version = int(await client.get(PREFIX + "version") or 0)
        tables: dict[Table, dict[str, dict[str, Any]]] = {}
        for tbl in ("providers", "models"):
            raw = await client.hgetall(PREFIX + tbl)
            tables[tbl] = {_text(k): json.loads(v) for k, v in raw.items()}
        return Catalog.decode(version, tables)

    async def load(self) -> Catalog:
        return await self._read(self.redis)

    async def transact(self, change: Callable[[Catalog], tuple[Writes, R]]) -> tuple[R, int]:
        from redis.exceptions import WatchError

        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(PREFIX + "version")
                    catalog = await self._read(pipe)
                    writes, result = change(catalog)
                    if not writes:
                        await pipe.unwatch()
                        return result, catalog.version
                    pipe.multi()
                    for (tbl, key), data in writes.items():
                        if data is None:
                            pipe.hdel(PREFIX + tbl, key)
                        else:
                            pipe.hset(PREFIX + tbl, key, json.dumps(data, separators=(",", ":")))
                    pipe.incr(PREFIX + "version")
                    replies = await pipe.execute()
                except WatchError:
                    continue
            version = int(replies[-1])
            await self.redis.publish(CHANNEL, str(version))
            return result, version

    async def changes(self) -> AsyncIterator[None]:
        """A message on the channel, or 250 ms without one (the version poll's tick)."""
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                while True:
                    await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.25)
                    yield None
            except asyncio.CancelledError:
                raise
            except Exception:
                yield None  # the feed is lost: the poll goes on, the subscription is retried
                await asyncio.sleep(0.25)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def sealed(self) -> list[tuple[str, str, str]]:
        return await _sealed(self)

    async def reseal(self, changes: Sequence[tuple[str, str, str, str]]) -> None:
        await self.transact(lambda catalog: _reseal_writes(catalog, changes))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def open_store(backend: str, state_dir: Path, redis: Callable[[], Any]) -> CatalogStore:
    """The store ``state.backend`` says (not started)."""
    if backend == "redis":
        return RedisCatalogStore(redis())
    return SqliteCatalogStore(Path(state_dir) / "llm" / "catalog.sqlite3")
