"""Reading the usage records: totals grouped by tenant, key, model, day, deployment or provider
(the admin API and the ``llm_usage`` plugin), and the records themselves, streamed (``gatewayd
llm usage export``).

Every read opens a read-only connection of its own on ``<state.dir>/llm/usage.sqlite3`` (WAL
mode: the daemon's writer goes on meanwhile) and is synchronous: the daemon's callers run
:func:`aggregate` in a thread of :class:`UsageReaders`, never on the event loop. A read sees
the records written so far (the store writes every 0.5 s).

Times are UTC. ``from``/``to`` are ISO 8601 dates (``2026-12-01``: that day's midnight) or
datetimes (``2026-12-01T10:00:00Z``; without an offset, UTC); ``to`` is exclusive, so
``from=2026-12-01&to=2026-12-02`` is that one day. Without them: the last 30 days.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import sqlite3
import time
from collections.abc import Callable, Generator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gatewayd_llm.usage import COLUMNS, UsageRecord, record_of

T = TypeVar("T")

__all__ = [
    "DEFAULT_DAYS",
    "GROUPS",
    "KINDS",
    "MAX_ROWS",
    "READERS",
    "BadParameter",
    "ReadersBusy",
    "StoreMissing",
    "UsageQuery",
    "UsageReaders",
    "aggregate",
    "iso",
    "parse_time",
    "records",
]

# group_by name -> the SQL expression of the group (the column, or the UTC day of ``time``)
GROUPS: dict[str, str] = {
    "tenant": "tenant",
    "key": "key_id",
    "model": "model",
    "day": "strftime('%Y-%m-%d', time, 'unixepoch')",
    "deployment": "deployment",
    "provider": "upstream",
}
KINDS = ("provider", "estimated", "partial")  # a record's ``source``
DEFAULT_DAYS = 30
DEFAULT_ROWS = 1000
MAX_ROWS = 10_000
PARAMETERS = frozenset({"group_by", "from", "to", "tenant", "kind", "limit"})


class BadParameter(ValueError):
    """A query parameter that cannot be used; ``parameter`` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = message


class StoreMissing(FileNotFoundError):
    """There is no usage store at that path (no request recorded yet, or another state.dir)."""


EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)  # and 30 days before it stays a date


def parse_time(parameter: str, value: str) -> float:
    """An ISO 8601 date or datetime (UTC unless it has an offset) as a POSIX timestamp."""
    text = value.strip()
    try:
        if len(text) == 10:  # YYYY-MM-DD
            day = dt.date.fromisoformat(text)
            when = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        else:
            when = dt.datetime.fromisoformat(text)
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
    except ValueError:
        raise BadParameter(
            parameter,
            f"{value!r} is not an ISO 8601 date or datetime (2026-12-01, 2026-12-01T10:00:00Z)",
        ) from None
    if not EARLIEST <= when <= LATEST:
        raise BadParameter(parameter, f"{value!r} is not from 1970-01-01 to 9999-01-01")
    return when.timestamp()


def iso(timestamp: float) -> str:
    """A POSIX timestamp as an ISO 8601 UTC datetime ending in ``Z``, cut (not rounded) to the
    microsecond: given back as ``from``, it selects the record it came from."""
    us = math.floor(timestamp * 1_000_000)
    while us / 1_000_000 > timestamp:  # the product was rounded up
        us -= 1
    when = EARLIEST + dt.timedelta(microseconds=us)
    return when.isoformat().replace("+00:00", "Z")


def time_range(start: str | None, end: str | None, now: float) -> tuple[float, float]:
    """``[from, to)`` from the parameters (either may be missing: the last 30 days, to now)."""
    hi = parse_time("to", end) if end else now
    lo = parse_time("from", start) if start else hi - DEFAULT_DAYS * 86400
    if lo >= hi:
        raise BadParameter("from", f"{iso(lo)} is not before to ({iso(hi)})")
    return lo, hi


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """What to total: records with ``start <= time < end`` (of ``tenant``, of ``kind``), grouped
    by ``group_by`` (names of :data:`GROUPS`), at most ``limit`` groups."""

    start: float
    end: float
    group_by: tuple[str, ...] = ()
    tenant: str | None = None
    kind: str | None = None
    limit: int = DEFAULT_ROWS

    @classmethod
    def from_params(
        cls, params: Mapping[str, str], now: float | None = None, max_rows: int = MAX_ROWS
    ) -> UsageQuery:
        """From query parameters (``group_by``, ``from``, ``to``, ``tenant``, ``kind``,
        ``limit``: at most ``max_rows``, default 1,000 or ``max_rows`` if less); raises
        :class:`BadParameter` naming the first bad one."""
        for name in params:
            if name not in PARAMETERS:
                raise BadParameter(
                    name, f"unknown parameter (known: {', '.join(sorted(PARAMETERS))})"
                )
        start, end = time_range(
            params.get("from"), params.get("to"), time.time() if now is None else now
        )
        group_by: list[str] = []
        for name in (params.get("group_by") or "").split(","):
            name = name.strip()
            if not name:
                continue
            if name not in GROUPS:
                raise BadParameter("group_by", f"{name!r} is not one of {', '.join(GROUPS)}")
            if name not in group_by:
                group_by.append(name)
        kind = params.get("kind") or None
        if kind is not None and kind not in KINDS:
            raise BadParameter("kind", f"{kind!r} is not one of {', '.join(KINDS)}")
        limit = min(DEFAULT_ROWS, max_rows)
        if params.get("limit"):
            try:
                limit = int(params["limit"])
            except ValueError:
                limit = 0
            if not 1 <= limit <= max_rows:
                raise BadParameter("limit", f"must be a whole number from 1 to {max_rows}")
        tenant = params.get("tenant") or None
        return cls(start, end, tuple(group_by), tenant, kind, limit)

    def where(self) -> tuple[str, list[Any]]:
        sql = "time >= ? AND time < ?"
        args: list[Any] = [self.start, self.end]
        if self.tenant is not None:
            sql += " AND tenant = ?"
            args.append(self.tenant)
        if self.kind is not None:
            sql += " AND source = ?"
            args.append(self.kind)
        return sql, args

    def describe(self) -> dict[str, Any]:
        """The query as the answer states it."""
        return {
            "from": iso(self.start),
            "to": iso(self.end),
            "group_by": list(self.group_by),
            "tenant": self.tenant,
            "kind": self.kind,
        }


# -- the reads -----------------------------------------------------------------------------------


def connect(path: Path) -> sqlite3.Connection:
    """A read-only connection on the store (:class:`StoreMissing` when there is none)."""
    path = Path(path)
    if not path.is_file():
        raise StoreMissing(f"no usage store at {path}")
    db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA busy_timeout=5000")
    return db


def _has_table(db: sqlite3.Connection) -> bool:
    found = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'usage'")
    return found.fetchone() is not None


# requests, prompt, completion, cost: over all records, then over each kind's
_MEASURES = ", ".join(
    [
        "COUNT(*)",
        "COALESCE(SUM(prompt_tokens), 0)",
        "COALESCE(SUM(completion_tokens), 0)",
        "COALESCE(TOTAL(cost), 0)",
    ]
    + [
        f"COALESCE(SUM(source = '{k}'), 0), "
        f"COALESCE(SUM(CASE WHEN source = '{k}' THEN prompt_tokens END), 0), "
        f"COALESCE(SUM(CASE WHEN source = '{k}' THEN completion_tokens END), 0), "
        f"TOTAL(CASE WHEN source = '{k}' THEN cost END)"
        for k in KINDS
    ]
)


def _totals(values: tuple[Any, ...] | sqlite3.Row) -> dict[str, Any]:
    def part(i: int) -> dict[str, Any]:
        requests, prompt, completion, cost = values[i : i + 4]
        return {
            "requests": requests,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "cost": cost,
        }

    out = part(0)
    out["by_kind"] = {k: part(4 + 4 * n) for n, k in enumerate(KINDS)}
    return out


def aggregate(path: Path, query: UsageQuery) -> dict[str, Any]:
    """The totals of the records ``query`` selects, per group (``rows``, at most
    ``query.limit``, ordered by the groups; ``truncated`` says whether there were more) and
    over all of them (``totals``, whatever the limit). Synchronous: run it in a thread."""
    db = connect(path)
    try:
        where, args = query.where()
        answer: dict[str, Any] = query.describe()
        if not _has_table(db):
            rows: list[dict[str, Any]] = []
            totals = _totals((0,) * 16)
            truncated = False
        else:
            groups = [GROUPS[g] for g in query.group_by]
            with db:  # one read transaction: rows and totals see the same records
                db.execute("BEGIN")
                if groups:
                    keys = ", ".join(groups)
                    sql = (
                        f"SELECT {keys}, {_MEASURES} FROM usage WHERE {where} "
                        f"GROUP BY {keys} ORDER BY {keys} LIMIT ?"
                    )
                    found = db.execute(sql, [*args, query.limit + 1]).fetchall()
                else:
                    found = []
                total = db.execute(f"SELECT {_MEASURES} FROM usage WHERE {where}", args).fetchone()
            truncated = len(found) > query.limit
            rows = []
            for row in found[: query.limit]:
                values = tuple(row)
                item: dict[str, Any] = dict(zip(query.group_by, values[: len(groups)], strict=True))
                item.update(_totals(values[len(groups) :]))
                rows.append(item)
            if not groups and total[0]:
                rows.append(_totals(tuple(total)))
            totals = _totals(tuple(total))
        answer.update(rows=rows, totals=totals, row_limit=query.limit, truncated=truncated)
        return answer
    finally:
        db.close()


class ReadersBusy(RuntimeError):
    """Too many usage reads wait already (the caller answers 503)."""


class UsageReaders:
    """The threads of the usage reads (``threads`` of them, made on first use), apart from the
    event loop's default executor: many or long reads (the ``llm_usage`` plugin answers tenants)
    never hold up what the daemon runs there. At most ``waiting`` reads are running or queued;
    one more raises :class:`ReadersBusy`. One per process:
    ``services.stores.shared(READERS, UsageReaders)``."""

    def __init__(self, threads: int = 2, waiting: int = 16) -> None:
        self.waiting = waiting
        self.busy = 0  # reads running or queued
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="llm-usage-read")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self.busy >= self.waiting:
            raise ReadersBusy(f"{self.busy} usage reads are waiting")
        self.busy += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self.busy -= 1

    async def aggregate(self, path: Path, query: UsageQuery) -> dict[str, Any]:
        """:func:`aggregate` in one of these threads (the event loop goes on)."""
        return await self.run(aggregate, path, query)


READERS = "llm:usage:readers"  # the name of the process's UsageReaders (stores.shared)


def records(
    path: Path, start: float, end: float, *, tenant: str | None = None, batch: int = 1000
) -> Generator[UsageRecord, None, None]:
    """The records with ``start <= time < end``, oldest first, read ``batch`` at a time (never
    all at once). The connection closes when the iterator is exhausted or closed."""
    db = connect(path)
    try:
        if not _has_table(db):
            return
        sql = f"SELECT {', '.join(COLUMNS)} FROM usage WHERE time >= ? AND time < ?"
        args: list[Any] = [start, end]
        if tenant is not None:
            sql += " AND tenant = ?"
            args.append(tenant)
        cursor = db.execute(sql + " ORDER BY time, id", args)
        while rows := cursor.fetchmany(batch):
            for row in rows:
                yield record_of(row)
    finally:
        db.close()
