"""The audit log's writer: records are queued and written in order by ONE task, a batch at a
time (one ``fsync`` per batch), hash-chained, with signed checkpoints (see
:mod:`gatewayd.observability.audit_chain` for the format and docs/audit.md for the rest).

``AuditLog.record(...)`` is synchronous and never blocks (a full queue or a failing disk is
counted in ``gatewayd_audit_write_errors_total`` and logged); it returns a future that is done
once the record is on disk, which ``await AuditLog.write(...)`` waits for (fail-closed callers).
Other processes (``gatewayd keys``) append through :class:`ChainWriter` under the same lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from gatewayd.config.audit import AuditConfig
from gatewayd.observability import audit_chain as fmt

log = logging.getLogger("gatewayd.audit")
BATCH = 1000
RECENT = 200


class AuditUnavailable(OSError):
    """A record could not be written (full queue, unwritable directory, full disk...)."""


def stamp(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Entry:
    """What a caller records; ``seq``, ``time``, ``prev`` and ``cp`` are the writer's."""

    type: str
    actor: str | None = None
    source: str | None = None
    what: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)


class ChainWriter:
    """Appends entries and checkpoints to a directory (blocking; one call at a time)."""

    def __init__(self, directory: Path, max_file_size: int) -> None:
        self.directory = directory
        self.max_file_size = max_file_size
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.key = fmt.load_or_create_key(directory)
        self.state = fmt.ChainState(size=-1)  # read on first use

    def _sync(self) -> None:
        """Re-read the tail when the files are not as this writer left them."""
        st = self.state
        path = self.directory / fmt.file_name(st.index)
        cps = self.directory / fmt.CHECKPOINTS
        size = path.stat().st_size if path.exists() else -1
        cp_size = cps.stat().st_size if cps.exists() else 0
        rotated = (self.directory / fmt.file_name(st.index + 1)).exists()
        if st.size < 0 or size != st.size or cp_size != st.cp_size or rotated:
            self.state = fmt.read_state(self.directory)
            if self.state.broken:
                log.error(
                    "audit log tail unreadable: restarting the chain",
                    extra={"reason": self.state.broken},
                )

    def append(self, entries: list[Entry]) -> list[dict[str, Any]]:
        """Write ``entries`` (and a restart record first when the tail was broken); the
        records written, in order. Nothing is kept of a batch that failed (OSError)."""
        with fmt.locked(self.directory):
            self._sync()
            st = replace(self.state)
            if st.broken is not None:
                reason, st.broken = st.broken, None
                entries = [Entry(fmt.RESTART, what={"reason": reason}), *entries]
                st.prev, st.index, st.size = fmt.GENESIS, st.index + 1, 0
            records, lines = [], []
            for e in entries:
                st.seq += 1
                doc = {
                    "seq": st.seq,
                    "time": stamp(e.at),
                    "prev": fmt.GENESIS if e.type == fmt.RESTART else st.prev,
                    "type": e.type,
                    "actor": e.actor,
                    "source": e.source,
                    "what": e.what,
                    "cp": st.checkpoints,
                }
                line = fmt.encode(doc)
                st.prev = fmt.line_hash(line)
                records.append(doc)
                lines.append(line + b"\n")
            data = b"".join(lines)
            if st.size > 0 and st.size + len(data) > self.max_file_size:
                st.index, st.size = st.index + 1, 0
            path = self.directory / fmt.file_name(st.index)
            _append_durably(path, data, st.size)
            st.size += len(data)
            self.state = st
            return records

    def checkpoint(self) -> dict[str, Any] | None:
        """Sign the last record, when it is not signed yet; the checkpoint written."""
        with fmt.locked(self.directory):
            self._sync()
            st = self.state
            if st.unsigned <= 0 or st.broken is not None:
                return None
            n = st.checkpoints + 1
            cp: dict[str, Any] = {
                "n": n,
                "prev": st.cp_prev,
                "seq": st.seq,
                "hash": st.prev,
                "file": fmt.file_name(st.index),
                "time": stamp(time.time()),
            }
            signed = fmt.sign_checkpoint(self.key, cp)
            line = fmt.encode(signed)
            _append_durably(self.directory / fmt.CHECKPOINTS, line + b"\n", st.cp_size)
            st.checkpoints, st.cp_prev, st.cp_seq = n, fmt.line_hash(line), st.seq
            st.cp_size += len(line) + 1
            return signed


def _append_durably(path: Path, data: bytes, expected: int) -> None:
    """Append and fsync; on failure cut the file back to what it was."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        try:
            os.write(fd, data)  # short writes of regular files come with an error
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, max(expected, 0))
            raise
    finally:
        os.close(fd)
    if expected == 0:  # a new file: make its directory entry durable too
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class AuditLog:
    """The daemon's audit log (one per process)."""

    def __init__(
        self,
        config: AuditConfig,
        directory: Path,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.directory = directory
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.last_checkpoint: dict[str, Any] | None = None
        self._queue: asyncio.Queue[tuple[Entry, asyncio.Future[int]] | None] = asyncio.Queue(
            config.queue
        )
        self._writer: ChainWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._oldest_unsigned: float | None = None
        self._last_cp_at = time.monotonic()
        self._records: Any = None
        self._errors: Any = None
        self._disk_ok = True  # the last write or checkpoint reached the disk
        if registry is not None:
            self._records = Counter(
                "gatewayd_audit_records_total",
                "Audit records written, by type",
                ["type"],
                registry=registry,
            )
            self._errors = Counter(
                "gatewayd_audit_write_errors_total",
                "Audit records that could not be written (queue full, disk or directory errors)",
                registry=registry,
            )
            age = Gauge(
                "gatewayd_audit_checkpoint_age_seconds",
                "How long the oldest audit record not covered by a signed checkpoint has"
                " waited (0 when every record is signed)",
                registry=registry,
            )
            age.set_function(self.checkpoint_age)

    async def start(self) -> None:
        self._writer = await asyncio.to_thread(
            ChainWriter, self.directory, self.config.max_file_size
        )
        self._task = asyncio.create_task(self._run())
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("the audit writer stopped", extra={"error": f"{type(exc).__name__}: {exc}"})

    @property
    def healthy(self) -> bool:
        """The writer runs and its last write reached the disk."""
        return self._task is not None and not self._task.done() and self._disk_ok

    def checkpoint_age(self) -> float:
        if self._oldest_unsigned is None:
            return 0.0
        return max(time.monotonic() - self._oldest_unsigned, 0.0)

    def record(
        self,
        type: str,
        actor: str | None = None,
        source: str | None = None,
        what: dict[str, Any] | None = None,
    ) -> asyncio.Future[int]:
        """Queue a record; the future is done (with its seq) when it is on disk, or failed."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self._task is None or self._task.done():
            self._failed(future, AuditUnavailable("the audit log is not running"))
            return future
        try:
            self._queue.put_nowait((Entry(type, actor, source, what or {}), future))
        except asyncio.QueueFull:
            self._failed(future, AuditUnavailable("the audit queue is full"))
            return future
        if self._oldest_unsigned is None:
            self._oldest_unsigned = time.monotonic()
        return future

    async def write(
        self,
        type: str,
        actor: str | None = None,
        source: str | None = None,
        what: dict[str, Any] | None = None,
    ) -> int:
        """Record and wait until it is on disk; raises :class:`AuditUnavailable`."""
        return await self.record(type, actor, source, what)

    def _failed(self, future: asyncio.Future[int], exc: BaseException) -> None:
        if self._errors is not None:
            self._errors.inc()
        if not future.done():
            future.set_exception(exc)
            future.add_done_callback(lambda f: f.exception())  # retrieved: no "never retrieved"

    async def _run(self) -> None:
        while True:
            try:
                item = await asyncio.wait_for(self._queue.get(), self._wait())
            except TimeoutError:
                await self._checkpoint()
                continue
            batch = [item]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            stop = None in batch
            await self._write([i for i in batch if i is not None])
            due = time.monotonic() - self._last_cp_at >= self.config.checkpoint_interval
            writer = self._writer
            if stop or due or (writer and writer.state.unsigned >= self.config.checkpoint_every):
                await self._checkpoint()
            if stop:
                return

    def _wait(self) -> float | None:
        if self._oldest_unsigned is None:
            return None
        left = self.config.checkpoint_interval - (time.monotonic() - self._last_cp_at)
        return max(min(self.config.checkpoint_idle, left), 0.0)

    async def _write(self, batch: list[tuple[Entry, asyncio.Future[int]]]) -> None:
        if not batch:
            return
        assert self._writer is not None
        try:
            records = await asyncio.to_thread(self._writer.append, [e for e, _ in batch])
        except OSError as exc:
            log.error("audit records not written", extra={"count": len(batch), "error": str(exc)})
            self._disk_ok = False
            for _, future in batch:
                self._failed(future, AuditUnavailable(f"audit log: {exc.strerror or exc}"))
            return
        self._disk_ok = True
        by_seq = iter(records[len(records) - len(batch) :])
        for rec in records[: len(records) - len(batch)]:  # a restart record
            self._written(rec)
        for (_, future), rec in zip(batch, by_seq, strict=True):
            self._written(rec)
            if not future.done():
                future.set_result(rec["seq"])

    def _written(self, rec: dict[str, Any]) -> None:
        self.recent.append(rec)
        if self._records is not None:
            self._records.labels(rec["type"]).inc()

    async def _checkpoint(self) -> None:
        assert self._writer is not None
        try:
            cp = await asyncio.to_thread(self._writer.checkpoint)
        except OSError as exc:
            if self._errors is not None:
                self._errors.inc()
            log.error("audit checkpoint not written", extra={"error": str(exc)})
            self._disk_ok = False
            return
        self._last_cp_at = time.monotonic()
        if cp is not None:
            self.last_checkpoint = cp
        if self._writer.state.unsigned <= 0:
            # Records queued while the checkpoint was written are not covered by it.
            self._oldest_unsigned = None if self._queue.empty() else time.monotonic()

    async def close(self) -> None:
        """Write what is queued, sign it, stop."""
        task = self._task
        if task is None or task.done():
            return
        await self._queue.put(None)
        with contextlib.suppress(asyncio.CancelledError):
            await task


def append_now(config: AuditConfig, directory: Path, entries: list[Entry]) -> None:
    """For other processes (the CLI): append and sign at once, under the writers' lock."""
    writer = ChainWriter(directory, config.max_file_size)
    writer.append(entries)
    writer.checkpoint()


def record_command(
    config: AuditConfig, state_dir: Path, command: str, type_: str, what: dict[str, Any]
) -> int:
    """A command's change (``gatewayd keys``, ``gatewayd admin token``) in the audit log, as
    the OS user who ran it, signed at once. The change is made first: a record that cannot be
    written is one line on stderr, and exit status 1 when ``audit.fail_closed`` is set."""
    if not config.enabled:
        return 0
    what = {**what, "user": getpass.getuser()}
    try:
        append_now(config, config.directory(state_dir), [Entry(type_, "cli", None, what)])
    except (OSError, ValueError) as exc:
        print(f"gatewayd {command}: the audit record was not written: {exc}", file=sys.stderr)
        return 1 if config.fail_closed else 0
    return 0
