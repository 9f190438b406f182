"""Authentication failures under a flood: per key/IP/route and minute, the first few one by
one, the rest as one record with their count; the number of records stays bounded."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gatewayd.config.audit import AuditConfig
from gatewayd.observability import audit_chain as fmt
from gatewayd.observability.audit import AuditLog
from gatewayd.observability.audit_aggregate import DENIAL, FAILURE, AuthFailures

MINUTE = 1_796_000_000 // 60 * 60  # the start of a minute


def records(directory: Path) -> list[dict[str, Any]]:
    out = []
    for _, path in fmt.log_files(directory):
        out += [json.loads(line) for line in path.read_bytes().splitlines()]
    return out


async def flood(
    tmp_path: Path, feed: Callable[[AuthFailures], None], after: int = 3, groups: int = 10
) -> list[dict[str, Any]]:
    log = AuditLog(AuditConfig(queue=100_000), tmp_path / "audit")
    await log.start()
    failures = AuthFailures(log, after, groups, clock=lambda: MINUTE + 1.0)
    feed(failures)
    await failures.close()
    await log.close()
    return [r for r in records(tmp_path / "audit") if str(r["type"]).startswith("auth.")]


async def test_one_source_flooding_gives_a_few_records_and_one_count(tmp_path: Path) -> None:
    def feed(f: AuthFailures) -> None:
        for i in range(10_000):
            f.seen(FAILURE, None, "203.0.113.9", "api", 401, now=MINUTE + i / 1000)

    recs = await flood(tmp_path, feed)
    assert len(recs) == 4
    assert [r["what"] for r in recs[:3]] == [{"route": "api", "status": 401}] * 3
    last = recs[3]
    assert last["source"] == "203.0.113.9" and last["what"]["count"] == 9_997
    assert last["what"]["aggregated"] is True and last["what"]["minute"].endswith(":00Z")


async def test_each_minute_and_each_group_counts_apart(tmp_path: Path) -> None:
    def feed(f: AuthFailures) -> None:
        for minute in range(2):
            for i in range(5):
                f.seen(FAILURE, None, "10.0.0.1", "api", 401, now=MINUTE + minute * 60 + i)
                f.seen(DENIAL, "key-1", "10.0.0.1", "api", 403, now=MINUTE + minute * 60 + i)

    recs = await flood(tmp_path, feed)
    counted = [(r["type"], r["actor"], r["what"]["count"]) for r in recs if "count" in r["what"]]
    assert counted == [(FAILURE, None, 2), (DENIAL, "key-1", 2)] * 2
    assert len(recs) == 2 * (2 * 3 + 2)


async def test_many_sources_are_bounded(tmp_path: Path) -> None:
    """20,000 failures from 20,000 addresses: at most groups * (after + 1) + 1 records."""

    def feed(f: AuthFailures) -> None:
        for i in range(20_000):
            f.seen(
                FAILURE, None, f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "api", 401, now=MINUTE
            )

    recs = await flood(tmp_path, feed, after=3, groups=10)
    assert len(recs) == 10 + 1  # the first 10 addresses one record each; the rest counted
    overflow = recs[-1]
    assert (overflow["actor"], overflow["source"], overflow["what"]["route"]) == ("*", "*", "*")
    assert overflow["what"]["count"] == 19_990
