"""The audit log's writer: one task, records in order, chained across rotations, checkpoints
every N records, when idle and at close; failures counted; other writers' records joined."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gatewayd.config.audit import AuditConfig
from gatewayd.observability import audit_chain as fmt
from gatewayd.observability import audit_verify as v
from gatewayd.observability.audit import AuditLog, AuditUnavailable, ChainWriter, Entry


def records(directory: Path) -> list[dict[str, object]]:
    out = []
    for _, path in fmt.log_files(directory):
        out += [json.loads(line) for line in path.read_bytes().splitlines()]
    return out


def checkpoints(directory: Path) -> list[dict[str, object]]:
    path = directory / fmt.CHECKPOINTS
    return [json.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


async def started(
    directory: Path, registry: CollectorRegistry | None = None, **kw: object
) -> AuditLog:
    log = AuditLog(AuditConfig.model_validate(kw), directory, registry)
    await log.start()
    return log


async def test_records_are_written_in_order_chained_and_signed_at_close(tmp_path: Path) -> None:
    d = tmp_path / "audit"
    log = await started(d, checkpoint_idle="1h")
    seqs = await asyncio.gather(
        *(log.write("admin.mutation", "ops", "10.0.0.1", {"i": i}) for i in range(50))
    )
    assert seqs == list(range(1, 51)) and log.healthy
    assert checkpoints(d) == []  # not idle long enough, not N records yet
    await log.close()
    recs = records(d)
    assert [r["what"] for r in recs] == [{"i": i} for i in range(50)]
    assert recs[0]["prev"] == fmt.GENESIS
    assert [c["seq"] for c in checkpoints(d)] == [50]
    assert (d / fmt.PRIVATE_KEY).stat().st_mode & 0o777 == 0o600
    assert v.verify(d, d / fmt.PUBLIC_KEY).code == v.OK


async def test_a_checkpoint_every_n_records_and_when_idle(tmp_path: Path) -> None:
    d = tmp_path / "audit"
    log = await started(d, checkpoint_every=5, checkpoint_idle="100ms")
    for i in range(12):
        await log.write("admin.mutation", what={"i": i})
    assert [c["seq"] for c in checkpoints(d)][:2] == [5, 10]
    for _ in range(50):  # idle: 11 and 12 get signed without a close
        if checkpoints(d)[-1]["seq"] == 12 and log.checkpoint_age() == 0.0:
            break
        await asyncio.sleep(0.05)
    assert checkpoints(d)[-1]["seq"] == 12
    assert log.checkpoint_age() == 0.0
    await log.close()
    assert [c["seq"] for c in checkpoints(d)] == [5, 10, 12]  # nothing new to sign at close


async def test_files_rotate_by_size_and_chain_on(tmp_path: Path) -> None:
    d = tmp_path / "audit"
    log = await started(d, max_file_size=2000)
    for i in range(40):
        await log.write("admin.mutation", what={"i": i, "pad": "x" * 50})
    await log.close()
    paths = [p for _, p in fmt.log_files(d)]
    assert len(paths) > 3 and all(p.stat().st_size <= 2000 for p in paths)
    assert v.verify(d, d / fmt.PUBLIC_KEY).code == v.OK


async def test_metrics(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    d = tmp_path / "audit"
    log = await started(d, registry, checkpoint_idle="1h")
    await log.write("key.create", "ops")
    await log.write("key.create", "ops")
    assert registry.get_sample_value("gatewayd_audit_records_total", {"type": "key.create"}) == 2
    await asyncio.sleep(0.05)
    age = registry.get_sample_value("gatewayd_audit_checkpoint_age_seconds")
    assert age is not None and age > 0.0
    await log.close()
    assert registry.get_sample_value("gatewayd_audit_checkpoint_age_seconds") == 0.0
    assert registry.get_sample_value("gatewayd_audit_write_errors_total") == 0


async def test_a_full_disk_fails_the_write_and_is_counted(tmp_path: Path) -> None:
    """A real ENOSPC: the log file is /dev/full."""
    if not Path("/dev/full").exists():  # noqa: ASYNC240
        pytest.skip("no /dev/full")
    registry = CollectorRegistry()
    d = tmp_path / "audit"
    d.mkdir()
    (d / fmt.file_name(1)).symlink_to("/dev/full")
    log = await started(d, registry)
    with pytest.raises(AuditUnavailable, match="No space left"):
        await log.write("admin.mutation", "ops")
    future = log.record("admin.mutation", "ops")  # record() never raises
    with pytest.raises(AuditUnavailable):
        await future
    assert registry.get_sample_value("gatewayd_audit_write_errors_total") == 2
    assert not log.healthy
    await log.close()


async def test_a_full_queue_is_refused_not_waited_for(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    log = await started(tmp_path / "audit", registry, queue=16)
    futures = [log.record("auth.failure") for _ in range(100)]  # no await in between
    results = await asyncio.gather(*futures, return_exceptions=True)
    refused = [r for r in results if isinstance(r, AuditUnavailable)]
    assert len(refused) == 84 and "full" in str(refused[0])
    assert registry.get_sample_value("gatewayd_audit_write_errors_total") == 84
    await log.close()


async def test_another_process_s_records_are_chained_in(tmp_path: Path) -> None:
    """``gatewayd keys`` appends under the same lock; the daemon's writer re-reads the tail."""
    d = tmp_path / "audit"
    log = await started(d)
    await log.write("admin.mutation", "ops")
    other = ChainWriter(d, 64 * 1024 * 1024)  # as the CLI does, in its own process
    other.append([Entry("key.create", "cli")])
    other.checkpoint()
    await log.write("admin.mutation", "ops")
    await log.close()
    assert [r["type"] for r in records(d)] == ["admin.mutation", "key.create", "admin.mutation"]
    assert v.verify(d, d / fmt.PUBLIC_KEY).code == v.OK


async def test_after_a_torn_last_line_the_chain_restarts_in_a_new_file(tmp_path: Path) -> None:
    d = tmp_path / "audit"
    log = await started(d)
    await log.write("admin.mutation", "ops")
    await log.close()
    with (d / fmt.file_name(1)).open("ab") as f:
        f.write(b'{"seq":2,"ti')  # a crash in the middle of a write
    log = await started(d)
    await log.write("admin.mutation", "ops")
    await log.close()
    restart = (
        records(d)[-2] if False else json.loads((d / fmt.file_name(2)).read_bytes().splitlines()[0])
    )
    assert restart["type"] == fmt.RESTART and "partial line" in restart["what"]["reason"]
    result = v.verify(d, d / fmt.PUBLIC_KEY)
    assert result.code == v.CHANGED and "incomplete" in result.message


async def test_a_stopped_log_refuses_records(tmp_path: Path) -> None:
    log = await started(tmp_path / "audit")
    await log.close()
    with pytest.raises(AuditUnavailable, match="not running"):
        await log.write("admin.mutation")


async def test_another_writer_s_rotation_is_noticed(tmp_path: Path) -> None:
    """The other writer started a new file and signed nothing: the daemon's writer must not
    go on in the old file from its stale tail."""
    d = tmp_path / "audit"
    log = await started(d, checkpoint_idle="1h")
    await log.write("admin.mutation", "ops")
    other = ChainWriter(d, 1)  # any batch rotates
    other.append([Entry("key.create", "cli")])
    await log.write("admin.mutation", "ops")
    await log.close()
    assert [r["seq"] for r in records(d)] == [1, 2, 3]
    assert v.verify(d, d / fmt.PUBLIC_KEY).code == v.OK
