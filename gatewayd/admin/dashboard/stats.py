"""What the dashboard's pages show, read from the running daemon (plain dicts for templates and
for the overview's JSON). Nothing here holds a secret: key records carry none, upstream and
relay snapshots hold ids, states and counts, and the config is shown as its hash."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

from gatewayd.admin.runtime import AdminRuntime
from gatewayd.admin.upstreams import upstream_views
from gatewayd.events.bus import Event, EventBus, EventFilter
from gatewayd.observability.audit import AuditLog
from gatewayd.observability.live import WINDOWS, LiveStats
from gatewayd.observability.taps import RequestTaps

log = logging.getLogger("gatewayd.admin")
RECENT_REVOCATIONS = 10
RECENT_EVENTS = 50
AUDIT_RECORDS = 20
SUMMARY = 160


@dataclass(slots=True)
class LastReload:
    at: float  # time.time()
    ok: bool
    generation: int | None
    error: str | None


@dataclass(slots=True)
class DashboardState:
    """Process-wide state of the dashboard (kept in ``services.extras`` so that an admin app
    rebuilt for a new ``admin.listen`` carries on with the same figures)."""

    live: LiveStats
    config_path: Path
    last_reload: LastReload | None = None
    config_hash: str | None = None
    _watch: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start(self, bus: EventBus | None) -> None:
        self.live.start()
        if self.config_hash is None:
            self.config_hash = await file_hash(self.config_path)
        if bus is not None and self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._reloads(bus))

    async def close(self) -> None:
        await self.live.close()
        task, self._watch = self._watch, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _reloads(self, bus: EventBus) -> None:
        """Follow ``config.reloaded`` / ``config.rejected`` (from the bus's buffer on)."""
        wanted = EventFilter.of(["config.reloaded", "config.rejected"])
        async with bus.subscribe(wanted, last_event_id=0, queue=16) as sub:
            async for item in sub:
                if isinstance(item, Event):
                    ok = item.type == "config.reloaded"
                    if ok:  # the file that was just loaded (as the audit log records it)
                        self.config_hash = await file_hash(self.config_path)
                    gen = item.payload.get("generation")
                    error = item.payload.get("error")
                    self.last_reload = LastReload(
                        at=item.time,
                        ok=ok,
                        generation=gen if isinstance(gen, int) else None,
                        error=str(error) if error is not None and not ok else None,
                    )


def registry_of(daemon: AdminRuntime) -> CollectorRegistry:
    return daemon.services.metrics.registry if daemon.services is not None else REGISTRY


def taps_of(daemon: AdminRuntime) -> RequestTaps | None:
    return daemon.services.taps if daemon.services is not None else None


def dashboard_state(daemon: AdminRuntime) -> DashboardState:
    extras = daemon.services.extras if daemon.services is not None else None
    state = extras.get("dashboard") if extras is not None else None
    if not isinstance(state, DashboardState):
        state = DashboardState(LiveStats(registry_of(daemon)), daemon.config_path)
        if extras is not None:
            extras["dashboard"] = state
    return state


async def file_hash(path: Path) -> str | None:
    """``sha256:<hex>`` of the config file, as the audit log's ``daemon.start`` and
    ``config.reloaded`` records name it (read when a generation starts to serve)."""
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError:
        return None
    return "sha256:" + hashlib.sha256(data).hexdigest()


def overview(daemon: AdminRuntime, state: DashboardState) -> dict[str, Any]:
    started = daemon.started_at
    last = state.last_reload
    windows = {}
    for seconds in WINDOWS:
        windows[f"{int(seconds // 60)}m"] = [
            {
                "route": r.route,
                "span": round(r.span, 1),
                "requests": int(r.requests),
                "rps": round(r.rps, 3),
                "rate_4xx": round(r.rate_4xx, 3),
                "rate_5xx": round(r.rate_5xx, 3),
                "p50_ms": _ms(r.p50),
                "p95_ms": _ms(r.p95),
                "p99_ms": _ms(r.p99),
            }
            for r in state.live.window(seconds)
        ]
    return {
        "generation": daemon.generation_number,
        "config_hash": state.config_hash,
        "config_path": str(daemon.config_path),
        "ready": daemon.ready,
        "uptime": round(time.time() - started, 1),
        "last_reload": None
        if last is None
        else {"at": last.at, "ok": last.ok, "generation": last.generation, "error": last.error},
        "windows": windows,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def upstreams(daemon: AdminRuntime) -> list[dict[str, Any]]:
    """Every upstream as ``GET /_admin/upstreams`` lists them (configured, relay leases,
    run-time ones), with the figures the page shows of each target."""
    out = upstream_views(daemon)
    for snap in out:
        source = snap.get("source")
        snap["source"] = f"runtime ({snap.get('owner')})" if source == "runtime" else "configured"
        for t in snap["targets"]:
            notes = [n for ns in t.get("plugins", {}).values() for n in ns]
            t["breakers"] = [
                f"{n.get('route', '?')}: {n['state']}"
                for n in notes
                if isinstance(n, dict) and "state" in n
            ]
            check = t.get("health_check") or {}
            t["last_check"] = check.get("last_check")
            t["last_error"] = check.get("last_error")
            t["health_failures"] = check.get("consecutive_failures")
    return out


def relay(daemon: AdminRuntime) -> dict[str, Any] | None:
    registry = daemon.services.relay if daemon.services is not None else None
    if registry is None:
        return None
    stats: dict[str, Any] = registry.stats()
    return stats


async def keys(daemon: AdminRuntime) -> dict[str, Any] | None:
    store = daemon.services.keys if daemon.services is not None else None
    if store is None:
        return None
    records = await store.list()
    now = time.time()
    counts = {"total": len(records), "active": 0, "revoked": 0, "expired": 0}
    tenants: dict[str, int] = {}
    for r in records:
        status = "revoked" if r.revoked_at is not None else "active" if r.active(now) else "expired"
        counts[status] += 1
        tenants[r.tenant] = tenants.get(r.tenant, 0) + 1
    revoked = sorted(
        (r for r in records if r.revoked_at is not None),
        key=lambda r: r.revoked_at or 0.0,
        reverse=True,
    )[:RECENT_REVOCATIONS]
    return {
        "counts": counts,
        "tenants": sorted(tenants.items(), key=lambda kv: (-kv[1], kv[0])),
        "revocations": [
            {"key_id": r.key_id, "tenant": r.tenant, "revoked_at": r.revoked_at} for r in revoked
        ],
    }


def audit(log: AuditLog | None) -> dict[str, Any] | None:
    """The audit log's last records (newest first), its last checkpoint and how long the
    oldest unsigned record has waited; None while the audit log is off."""
    if log is None:
        return None
    records = list(log.recent)[-AUDIT_RECORDS:][::-1]
    return {
        "records": [r | {"summary": _summary(r.get("what"))} for r in records],
        "checkpoint": log.last_checkpoint,
        "unsigned_age": log.checkpoint_age(),
        "directory": str(log.directory),
    }


def _summary(what: Any) -> str:
    """One line of a record's ``what`` (already masked by the audit log), cut short."""
    if not isinstance(what, dict):
        return ""
    text = json.dumps(what, separators=(", ", ": "), default=str, sort_keys=True)
    return text if len(text) <= SUMMARY else text[: SUMMARY - 1] + "\u2026"


def recent_events(bus: EventBus | None, limit: int = RECENT_EVENTS) -> list[dict[str, Any]]:
    """The last ``limit`` events the bus still buffers, newest first."""
    if bus is None:
        return []
    out: list[dict[str, Any]] = []
    sub = bus.subscribe(last_event_id=max(bus.last_id - limit, 0), queue=limit + 1)
    try:
        while (item := sub.get_nowait()) is not None:
            if isinstance(item, Event):
                out.append(item.as_dict())
    finally:
        sub.close()
    return out[::-1][:limit]
