"""Usage records: one per request, written to SQLite in batches, off the event loop.

The file is ``<state.dir>/llm/usage.sqlite3`` (the plugin passes the path).
:meth:`UsageStore.record` only appends to a bounded in-memory queue; a writer task hands batches
to one thread of the store's own, which owns the SQLite connection (WAL mode) and inserts each
batch in one transaction.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatewayd_llm.exchange import UsageSource

__all__ = ["COLUMNS", "UsageRecord", "UsageStore", "UsageStoreClosed", "record_of", "store_path"]

log = logging.getLogger("gatewayd_llm.usage")

SCHEMA_VERSION = 1


def store_path(state_dir: Path) -> Path:
    """Where the usage records of a gateway with this ``state.dir`` are."""
    return Path(state_dir) / "llm" / "usage.sqlite3"


@dataclass(slots=True)
class UsageRecord:
    """What one request used. ``time`` is wall-clock (``time.time()``) at the request's end;
    ``model`` is the client's model name, ``provider_model`` the deployment's; ``source`` says
    whether the tokens are the provider's counts, an estimate (cancelled, or the provider gave
    none) or partial (the provider's counts of a stream that failed or was cut)."""

    request_id: str
    time: float
    route: str
    model: str
    deployment: str | None
    upstream: str | None
    provider_model: str | None
    key_id: str | None
    tenant: str | None
    prompt_tokens: int
    completion_tokens: int
    source: UsageSource
    cost: float
    status: int
    stream: bool
    cancelled: bool
    duration_ms: float
    ttft_ms: float | None
    fallbacks: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


# The columns, in UsageRecord's field order (the table adds ``id``, the insertion order).
_COLUMNS: tuple[tuple[str, str], ...] = (
    ("request_id", "TEXT NOT NULL"),
    ("time", "REAL NOT NULL"),
    ("route", "TEXT NOT NULL"),
    ("model", "TEXT NOT NULL"),
    ("deployment", "TEXT"),
    ("upstream", "TEXT"),
    ("provider_model", "TEXT"),
    ("key_id", "TEXT"),
    ("tenant", "TEXT"),
    ("prompt_tokens", "INTEGER NOT NULL"),
    ("completion_tokens", "INTEGER NOT NULL"),
    ("source", "TEXT NOT NULL"),
    ("cost", "REAL NOT NULL"),
    ("status", "INTEGER NOT NULL"),
    ("stream", "INTEGER NOT NULL"),
    ("cancelled", "INTEGER NOT NULL"),
    ("duration_ms", "REAL NOT NULL"),
    ("ttft_ms", "REAL"),
    ("fallbacks", "INTEGER NOT NULL"),
)
_NAMES = ", ".join(name for name, _ in _COLUMNS)
COLUMNS: tuple[str, ...] = tuple(name for name, _ in _COLUMNS)  # a record's fields, in order
_INSERT = f"INSERT INTO usage ({_NAMES}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS usage (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    + ", ".join(f"{name} {decl}" for name, decl in _COLUMNS)
    + ")",
    "CREATE INDEX IF NOT EXISTS usage_time ON usage (time)",
    "CREATE INDEX IF NOT EXISTS usage_request_id ON usage (request_id)",
    # a tenant's usage over a time range (the llm_usage plugin, ?tenant= of the admin API)
    "CREATE INDEX IF NOT EXISTS usage_tenant_time ON usage (tenant, time)",
)


def _row(rec: UsageRecord) -> tuple[Any, ...]:
    return (
        rec.request_id,
        rec.time,
        rec.route,
        rec.model,
        rec.deployment,
        rec.upstream,
        rec.provider_model,
        rec.key_id,
        rec.tenant,
        rec.prompt_tokens,
        rec.completion_tokens,
        rec.source,
        rec.cost,
        rec.status,
        int(rec.stream),
        int(rec.cancelled),
        rec.duration_ms,
        rec.ttft_ms,
        rec.fallbacks,
    )


def record_of(row: sqlite3.Row) -> UsageRecord:
    """The record of a row that holds :data:`COLUMNS` (a connection with ``sqlite3.Row``)."""
    return UsageRecord(
        request_id=row["request_id"],
        time=row["time"],
        route=row["route"],
        model=row["model"],
        deployment=row["deployment"],
        upstream=row["upstream"],
        provider_model=row["provider_model"],
        key_id=row["key_id"],
        tenant=row["tenant"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        source=row["source"],
        cost=row["cost"],
        status=row["status"],
        stream=bool(row["stream"]),
        cancelled=bool(row["cancelled"]),
        duration_ms=row["duration_ms"],
        ttft_ms=row["ttft_ms"],
        fallbacks=row["fallbacks"],
    )


class UsageStoreClosed(RuntimeError):
    """A record offered to a store that was closed (it would be lost: the caller must know)."""


class UsageStore:
    """The usage records of one SQLite file, written in batches off the event loop.

    - :meth:`record` is synchronous and never blocks: it appends to a bounded queue
      (``max_queue`` records). When the queue is full the record is dropped and counted in
      :attr:`dropped` (logged at WARNING at most once per ``interval``): a record is never lost
      without a count. After :meth:`close` it raises :class:`UsageStoreClosed`.
    - A writer task writes whatever is queued every ``interval`` seconds, or as soon as ``batch``
      records wait, in transactions of at most ``batch`` records, on the store's one thread (which
      owns the connection). Queue order is insertion order (the table's ``id``).
    - :meth:`flush` writes everything queued so far; :meth:`close` flushes everything and closes
      the file. :meth:`query` reads what has been written (not what still waits: flush first).
    - A write that fails (disk full...) drops its batch, counted in :attr:`failed` and logged.

    Reloads: one store per file for the process's life. The ``llm`` plugin keeps it across
    generations with ``context.keep("usage:<path>", lambda: UsageStore(path))`` and calls
    :meth:`start` in its ``start()`` (idempotent: the next generation's call is a no-op); gatewayd
    calls :meth:`close` when no generation keeps it any more (or at shutdown), so records of
    requests still draining in the old generation land in the same store.
    """

    def __init__(
        self, path: Path, batch: int = 200, interval: float = 0.5, max_queue: int = 100_000
    ) -> None:
        if batch < 1 or interval <= 0 or max_queue < 1:
            raise ValueError("batch and max_queue must be >= 1 and interval > 0")
        self.path = Path(path)
        self.batch = batch
        self.interval = interval
        self.max_queue = max_queue
        self.dropped = 0  # records refused because the queue was full
        self.failed = 0  # records whose write failed
        self.written = 0  # records committed
        self._queue: collections.deque[UsageRecord] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._writer: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._closed = False
        self._dropped_logged = 0
        self._dropped_logged_at = 0.0  # monotonic

    @property
    def pending(self) -> int:
        """Records queued and not yet written."""
        return len(self._queue)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open (create) the file and start the writer. Idempotent."""
        if self._closed:
            raise UsageStoreClosed(f"usage store {self.path} is closed")
        if self._writer is not None:
            return
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-usage")
        await self._run(self._open)
        self._writer = asyncio.create_task(self._write_loop(), name="llm-usage-writer")

    async def close(self) -> None:
        """Refuse new records, write every queued one, close the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is not None:  # not cancelled: a batch handed to the thread must be counted
            assert self._wake is not None
            self._wake.set()
            await writer
        if self._executor is None:  # never started: nothing can be written
            if self._queue:
                self.failed += len(self._queue)
                log.warning(
                    "usage store closed before it started: records lost",
                    extra={"records": len(self._queue), "path": str(self.path)},
                )
                self._queue.clear()
            return
        try:
            await self._drain()
            self._log_dropped(final=True)
        finally:
            await self._run(self._close_db)
            self._executor.shutdown(wait=True)
            self._executor = None

    # -- the event loop's side -------------------------------------------------------------------

    def record(self, rec: UsageRecord) -> None:
        """Queue one record (never blocks). Dropped (and counted) when the queue is full."""
        if self._closed:
            raise UsageStoreClosed(f"usage store {self.path} is closed: record {rec.request_id}")
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            return
        self._queue.append(rec)
        if len(self._queue) == self.batch and self._wake is not None:
            self._wake.set()

    async def flush(self) -> None:
        """Write every record queued so far."""
        if self._executor is None:
            raise UsageStoreClosed(f"usage store {self.path} is not started or closed")
        await self._drain()

    async def query(
        self, *, request_id: str | None = None, since: float | None = None, limit: int = 1000
    ) -> list[UsageRecord]:
        """Written records, oldest first: those of ``request_id``, and/or with ``time >=
        since``, at most ``limit`` of them."""
        if self._executor is None:
            raise UsageStoreClosed(f"usage store {self.path} is not started or closed")
        where: list[str] = []
        args: list[Any] = []
        if request_id is not None:
            where.append("request_id = ?")
            args.append(request_id)
        if since is not None:
            where.append("time >= ?")
            args.append(since)
        sql = f"SELECT {_NAMES} FROM usage"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id LIMIT ?"
        args.append(max(0, int(limit)))
        return await self._run(self._select, sql, args)

    async def _write_loop(self) -> None:
        assert self._wake is not None
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            await self._drain()
            self._log_dropped()

    async def _drain(self) -> None:
        assert self._lock is not None
        async with self._lock:
            while self._queue:
                n = min(self.batch, len(self._queue))
                chunk = [self._queue.popleft() for _ in range(n)]
                try:
                    await self._run(self._insert, chunk)
                except Exception as exc:  # the writer must live on; the loss is counted
                    self.failed += len(chunk)
                    log.error(
                        "usage records could not be written",
                        extra={"records": len(chunk), "path": str(self.path), "error": str(exc)},
                    )
                else:
                    self.written += len(chunk)

    def _log_dropped(self, final: bool = False) -> None:
        """At most once per ``interval`` (and once more at the end): how many were dropped."""
        if self.dropped == self._dropped_logged:
            return
        now = time.monotonic()
        if final or now - self._dropped_logged_at >= self.interval:
            self._dropped_logged_at = now
            log.warning(
                "usage queue full: records dropped",
                extra={
                    "dropped": self.dropped - self._dropped_logged,
                    "dropped_total": self.dropped,
                    "max_queue": self.max_queue,
                },
            )
            self._dropped_logged = self.dropped

    async def _run(self, fn: Any, *args: Any) -> Any:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- the writer thread's side ----------------------------------------------------------------

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            db.close()
            raise RuntimeError(f"{self.path}: usage schema {version} is newer than this plugin's")
        for statement in _SCHEMA:
            db.execute(statement)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._db = db

    def _insert(self, records: Iterable[UsageRecord]) -> None:
        assert self._db is not None
        rows = [_row(r) for r in records]
        with self._db:  # one transaction
            self._db.execute("BEGIN")
            self._db.executemany(_INSERT, rows)

    def _select(self, sql: str, args: list[Any]) -> list[UsageRecord]:
        assert self._db is not None
        return [record_of(row) for row in self._db.execute(sql, args)]

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
