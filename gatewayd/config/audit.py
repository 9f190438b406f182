"""``audit:``: the tamper-evident audit log (see docs/audit.md)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from gatewayd.config.units import Duration, Size


class AuditConfig(BaseModel):
    """Where and how the audit log is written (changes need a restart).

    ``dir``: default ``<state.dir>/audit``. A file is rotated when it would grow past
    ``max_file_size``. A signed checkpoint is written after ``checkpoint_every`` records, when
    ``checkpoint_interval`` has passed since the last one, after ``checkpoint_idle`` without a
    new record, and at shutdown (only when a record is not yet covered). ``auth_failures``:
    record 401s and 403s (gateway and admin API); per key, client IP, route and minute the first
    ``aggregate_after`` are recorded one by one and the rest as one record with their count, and
    at most ``max_aggregates`` such groups are kept per minute (the rest are counted together).
    ``fail_closed``: an admin mutation whose record cannot be written is refused with 503."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    enabled: bool = True
    dir: Path | None = None
    max_file_size: Size = 64 * 1024 * 1024
    checkpoint_every: int = Field(1000, ge=1, le=10_000_000)
    checkpoint_interval: Duration = 60.0
    checkpoint_idle: Duration = 2.0
    auth_failures: bool = True
    aggregate_after: int = Field(5, ge=0, le=10_000)
    max_aggregates: int = Field(1000, ge=1, le=1_000_000)
    fail_closed: bool = False
    queue: int = Field(10_000, ge=16, le=1_000_000)

    def directory(self, state_dir: Path) -> Path:
        return self.dir if self.dir is not None else state_dir / "audit"
