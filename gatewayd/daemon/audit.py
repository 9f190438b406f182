"""The daemon's audit log and what feeds it besides the admin API: the start and stop, config
reloads (by :class:`gatewayd.daemon.process.Daemon`), relay leases (from the event bus's
``relay.peer.*`` events) and the gateway's 401/403 replies (a request tap)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from gatewayd.admin.audit import AUDIT, AUTH_FAILURES
from gatewayd.config.schema import GatewayConfig
from gatewayd.daemon.services import Services
from gatewayd.events.bus import Event, EventFilter, Subscription
from gatewayd.observability.audit import AuditLog
from gatewayd.observability.audit_aggregate import AuthFailures
from gatewayd.observability.metrics import Metrics

log = logging.getLogger("gatewayd.audit")
LEASE_EVENTS = {
    "relay.peer.connected": "relay.lease.registered",
    "relay.peer.disconnected": "relay.lease.lost",
}


def config_hash(path: Path) -> str | None:
    try:
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class DaemonAudit:
    def __init__(self, audit: AuditLog | None, failures: AuthFailures | None) -> None:
        self.log = audit
        self.failures = failures
        self._services: Services | None = None
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls, config: GatewayConfig, services: Services, metrics: Metrics
    ) -> DaemonAudit:
        settings = config.audit
        if not settings.enabled:
            return cls(None, None)
        audit = AuditLog(settings, settings.directory(config.state.dir), metrics.registry)
        try:
            await audit.start()
        except (OSError, ValueError) as exc:
            if settings.fail_closed:
                raise OSError(f"audit log: {exc}") from exc
            # Serve without it: every record fails and is counted (the alert says so).
            log.error("the audit log cannot be opened", extra={"error": str(exc)})
        failures = None
        if settings.auth_failures:
            failures = AuthFailures(audit, settings.aggregate_after, settings.max_aggregates)
            services.taps.add(failures.on_request)
            failures.start()
        self = cls(audit, failures)
        self._services = services
        self._sub = services.events.subscribe(EventFilter.of(["relay.peer.*"]))
        self._task = asyncio.create_task(self._leases(self._sub))
        return self

    def attach(self, app: web.Application) -> None:
        """Give an admin app the log (before its runner starts)."""
        if self.log is not None:
            app[AUDIT] = self.log
        if self.failures is not None:
            app[AUTH_FAILURES] = self.failures

    def record(self, type_: str, what: dict[str, Any], actor: str | None = None) -> None:
        if self.log is not None:
            self.log.record(type_, actor, None, what)

    async def _leases(self, sub: Subscription) -> None:
        async for item in sub:
            if isinstance(item, Event):
                self._lease(item)
            else:
                self.record("audit.gap", {"missed": item.missed, "reason": item.reason})

    def _lease(self, event: Event) -> None:
        kind = LEASE_EVENTS.get(event.type)
        if kind is None or self.log is None:
            return
        p = event.payload
        key_id = str(p.get("peer", "")).partition("/")[0] or None
        what: dict[str, Any] = {
            k: p.get(k) for k in ("lease", "connection", "peer", "reason") if k in p
        }
        self.log.record(kind, key_id, p.get("client_ip"), what)

    async def close(self, stop: dict[str, Any] | None = None) -> None:
        """Record what is pending (leases, counted failures), then ``daemon.stop`` with
        ``stop``; sign and stop the log."""
        if self._sub is not None:
            while (item := self._sub.get_nowait()) is not None:
                if isinstance(item, Event):
                    self._lease(item)
            self._sub.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.failures is not None:
            if self._services is not None:
                self._services.taps.discard(self.failures.on_request)
            await self.failures.close()
        if self.log is not None:
            if stop is not None:
                self.log.record("daemon.stop", None, None, stop)
            await self.log.close()
