"""gatewayd_llm.usage_query on a real store: totals grouped and filtered as computed from the
records written, the parameters' errors, the records streamed on a read-only connection."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from gatewayd_llm.usage import UsageRecord, UsageStore
from gatewayd_llm.usage_query import (
    KINDS,
    BadParameter,
    ReadersBusy,
    StoreMissing,
    UsageQuery,
    UsageReaders,
    aggregate,
    iso,
    parse_time,
    records,
)
from test_llm_usage import make

DAY0 = dt.datetime(2026, 11, 28, tzinfo=dt.UTC).timestamp()  # a UTC midnight
NOW = DAY0 + 5 * 86400


def spread(n: int) -> list[UsageRecord]:
    """``n`` records over five UTC days (eight hours apart, the first at DAY0 + 1 s)."""
    return [make(i, time=DAY0 + 1 + i * 8 * 3600) for i in range(n)]


@pytest.fixture
async def store(
    tmp_path: Path,
) -> AsyncIterator[tuple[Path, Callable[[Iterable[UsageRecord]], Any]]]:
    path = tmp_path / "llm" / "usage.sqlite3"
    st = UsageStore(path)
    await st.start()

    async def write(recs: Iterable[UsageRecord]) -> None:
        for rec in recs:
            st.record(rec)
        await st.flush()

    yield path, write
    await st.close()


def day(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d")


KEY = {
    "tenant": lambda r: r.tenant,
    "key": lambda r: r.key_id,
    "model": lambda r: r.model,
    "day": lambda r: day(r.time),
    "deployment": lambda r: r.deployment,
    "provider": lambda r: r.upstream,
}


def totals(recs: list[UsageRecord]) -> dict[str, Any]:
    def part(rs: list[UsageRecord]) -> dict[str, Any]:
        p = sum(r.prompt_tokens for r in rs)
        c = sum(r.completion_tokens for r in rs)
        return {
            "requests": len(rs),
            "prompt_tokens": p,
            "completion_tokens": c,
            "total_tokens": p + c,
            "cost": pytest.approx(sum(r.cost for r in rs)),
        }

    out = part(recs)
    out["by_kind"] = {k: part([r for r in recs if r.source == k]) for k in KINDS}
    return out


def expected_rows(recs: list[UsageRecord], group_by: tuple[str, ...]) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[UsageRecord]] = defaultdict(list)
    for r in recs:
        groups[tuple(KEY[g](r) for g in group_by)].append(r)
    # SQLite orders NULL first
    order = sorted(groups, key=lambda k: tuple((v is not None, v or "") for v in k))
    return [dict(zip(group_by, k, strict=True)) | totals(groups[k]) for k in order]


async def test_totals_grouped_by_every_subset_match_the_records(store) -> None:
    path, write = store
    recs = spread(15)
    await write(recs)
    for group_by in [
        (),
        ("tenant",),
        ("day",),
        ("tenant", "key", "model", "day"),
        ("deployment", "provider"),
        ("model", "tenant"),
    ]:
        q = UsageQuery.from_params({"group_by": ",".join(group_by)}, now=NOW)
        got = aggregate(path, q)
        assert got["group_by"] == list(group_by)
        assert got["totals"] == totals(recs)
        want = expected_rows(recs, group_by) if group_by else [totals(recs)]
        assert got["rows"] == want, group_by
        assert got["truncated"] is False
    # every kind of record is there, and the day grouping is UTC days
    assert {r.source for r in recs} == set(KINDS)
    days = aggregate(path, UsageQuery.from_params({"group_by": "day"}, now=NOW))["rows"]
    assert [d["day"] for d in days] == [
        "2026-11-28",
        "2026-11-29",
        "2026-11-30",
        "2026-12-01",
        "2026-12-02",
    ]


async def test_range_filters_and_row_limit(store) -> None:
    path, write = store
    recs = spread(15)
    await write(recs)
    # one UTC day: to is exclusive
    q = UsageQuery.from_params({"from": "2026-11-30", "to": "2026-12-01"}, now=NOW)
    got = aggregate(path, q)
    one_day = [r for r in recs if day(r.time) == "2026-11-30"]
    assert len(one_day) == 3 and got["totals"] == totals(one_day)
    assert (got["from"], got["to"]) == ("2026-11-30T00:00:00Z", "2026-12-01T00:00:00Z")
    # datetimes with an offset; a record exactly at `to` is left out, one exactly at `from` in
    start, end = recs[3].time, recs[6].time
    iso_start = dt.datetime.fromtimestamp(start, dt.timezone(dt.timedelta(hours=2))).isoformat()
    q = UsageQuery.from_params({"from": iso_start, "to": iso(end)}, now=NOW)
    assert aggregate(path, q)["totals"] == totals(recs[3:6])
    # tenant and kind
    tenant = recs[2].tenant
    assert tenant is not None
    q = UsageQuery.from_params({"tenant": tenant, "kind": "estimated"}, now=NOW)
    assert aggregate(path, q)["totals"] == totals(
        [r for r in recs if r.tenant == tenant and r.source == "estimated"]
    )
    # the limit cuts the rows, says so, and leaves the totals whole
    q = UsageQuery.from_params({"group_by": "tenant,day", "limit": "4"}, now=NOW)
    got = aggregate(path, q)
    assert got["truncated"] is True and got["row_limit"] == 4
    assert got["rows"] == expected_rows(recs, ("tenant", "day"))[:4]
    assert got["totals"] == totals(recs)
    # the default range is the 30 days before now
    old = make(99, time=NOW - 31 * 86400, tenant="old")
    await write([old])
    assert aggregate(path, UsageQuery.from_params({}, now=NOW))["totals"] == totals(recs)
    q = UsageQuery.from_params({"from": "2026-01-01"}, now=NOW)
    assert aggregate(path, q)["totals"] == totals([old, *recs])


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-13-01"}, "to"),
        ({"to": "0001-01-01"}, "to"),  # 30 days before it is no date
        ({"from": "9999-12-31T23:59:59-23:59"}, "from"),
        ({"from": "2026-12-02", "to": "2026-12-01"}, "from"),
        ({"from": "2026-12-01", "to": "2026-12-01"}, "from"),
        ({"group_by": "tenant,colour"}, "group_by"),
        ({"kind": "reported"}, "kind"),
        ({"limit": "0"}, "limit"),
        ({"limit": "10001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"groupby": "tenant"}, "groupby"),
    ],
)
def test_bad_parameters_are_named(params: dict[str, str], name: str) -> None:
    with pytest.raises(BadParameter) as caught:
        UsageQuery.from_params(params, now=NOW)
    assert caught.value.parameter == name
    assert str(caught.value).startswith(f"{name}: ")


def test_times() -> None:
    assert parse_time("from", "2026-11-28") == DAY0
    assert parse_time("from", "2026-11-28T00:00:00Z") == DAY0
    assert parse_time("from", "2026-11-28T00:00:00") == DAY0  # no offset: UTC
    assert parse_time("from", "2026-11-28T01:30:00+01:30") == DAY0
    # an exported time given back as `from` selects its record: cut, never rounded up
    for i in range(20_000):
        t = NOW + i * 0.123_456_789_1
        back = parse_time("from", iso(t))
        assert t - 2e-6 < back <= t, (t, iso(t))


async def test_records_stream_on_a_read_only_connection(store, tmp_path: Path) -> None:
    path, write = store
    recs = spread(2500)
    await write(recs)
    it = records(path, DAY0, recs[-1].time + 1, batch=100)
    first = next(it)
    assert first == recs[0]
    # the reader holds a read-only connection: the writer goes on (WAL) meanwhile
    await write([make(5000, time=DAY0 + 2)])
    assert [first, *it] == recs  # the reader's snapshot: the new record is not in it
    again = list(records(path, DAY0, recs[-1].time + 1))
    assert len(again) == 2501 and again[1].request_id == "req-005000"
    assert list(records(path, DAY0, NOW, tenant=recs[1].tenant)) == [
        r for r in again if r.tenant == recs[1].tenant and r.time < NOW
    ]
    with pytest.raises(StoreMissing):
        next(records(tmp_path / "nowhere.sqlite3", 0, 1))
    with pytest.raises(StoreMissing):
        aggregate(tmp_path / "nowhere.sqlite3", UsageQuery(0, 1))
    # read-only: the reader cannot change the file
    db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError):
        db.execute("DELETE FROM usage")
    db.close()


async def test_readers_run_reads_on_their_own_threads_and_bound_the_queue(store) -> None:
    path, write = store
    recs = spread(30)
    await write(recs)
    readers = UsageReaders(threads=1, waiting=2)
    q = UsageQuery.from_params({"group_by": "model", "from": "2026-01-01", "to": "2030-01-01"})
    got = await readers.aggregate(path, q)
    assert got["rows"] == expected_rows(recs, ("model",))

    release = threading.Event()
    names: list[str] = []

    def blocked() -> str:
        names.append(threading.current_thread().name)
        assert release.wait(10)
        return "done"

    first = asyncio.ensure_future(readers.run(blocked))
    second = asyncio.ensure_future(readers.run(blocked))
    await asyncio.sleep(0.05)
    assert readers.busy == 2 and len(names) == 1  # one thread: the second waits its turn
    with pytest.raises(ReadersBusy):
        await readers.aggregate(path, q)
    # the loop's default executor is free meanwhile
    assert await asyncio.to_thread(lambda: threading.current_thread().name) not in names
    release.set()
    assert await asyncio.gather(first, second) == ["done", "done"]
    assert readers.busy == 0 and all(n.startswith("llm-usage-read") for n in names)
    assert (await readers.aggregate(path, q))["rows"] == got["rows"]
