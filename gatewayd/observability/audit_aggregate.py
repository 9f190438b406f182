"""Authentication failures and authorization denials in the audit log, bounded under a flood.

Per (type, key, client IP, route) and minute, the first ``aggregate_after`` are recorded one by
one and the rest as one record with their ``count`` when the minute ends. At most
``max_aggregates`` groups are tracked per minute; past that every further failure counts into
one group per type whose key, IP and route are ``*``. So a minute holds at most
``max_aggregates * (aggregate_after + 1) + 1`` such records per type, whatever the traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime

from gatewayd.chain.api import RequestContext
from gatewayd.observability.audit import AuditLog

Group = tuple[str, str | None, str | None, str]
FAILURE = "auth.failure"  # 401
DENIAL = "auth.denied"  # 403


class AuthFailures:
    def __init__(
        self,
        audit: AuditLog,
        after: int,
        max_groups: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.audit = audit
        self.after = after
        self.max_groups = max_groups
        self.clock = clock
        self._minute: int | None = None
        self._counts: dict[Group, int] = {}
        self._task: asyncio.Task[None] | None = None

    def seen(
        self,
        type_: str,
        actor: str | None,
        source: str | None,
        route: str,
        status: int,
        now: float | None = None,
    ) -> None:
        minute = int((self.clock() if now is None else now) // 60)
        if minute != self._minute:
            self.flush()
            self._minute = minute
        group: Group = (type_, actor, source, route)
        n = self._counts.get(group)
        if n is None and len(self._counts) >= self.max_groups:
            group = (type_, "*", "*", "*")
            n = self._counts.get(group, self.after)  # the overflow group is only counted
        n = n or 0
        self._counts[group] = n + 1
        if n < self.after:
            self.audit.record(type_, actor, source, {"route": route, "status": status})

    def flush(self) -> None:
        """Write the counted groups of the minute that is ending."""
        if self._minute is None:
            return
        start = datetime.fromtimestamp(self._minute * 60, UTC).isoformat().replace("+00:00", "Z")
        for (type_, actor, source, route), n in self._counts.items():
            if n > self.after:
                what = {"route": route, "count": n - self.after, "minute": start}
                self.audit.record(type_, actor, source, {**what, "aggregated": True})
        self._counts.clear()

    def on_request(self, ctx: RequestContext, status: int) -> None:
        """A request tap: the gateway's own 401s and 403s (not those of an upstream)."""
        if (status == 401 or status == 403) and not ctx.attempts:
            p = ctx.principal
            actor = (p.key_id or p.subject) if p is not None else None
            kind = FAILURE if status == 401 else DENIAL
            self.seen(kind, actor, ctx.request.client_ip, ctx.route.name, status)

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            now = self.clock()
            await asyncio.sleep(60 - now % 60 + 0.05)
            minute = int(self.clock() // 60)
            if self._minute is not None and minute != self._minute:
                self.flush()
                self._minute = minute

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush()
