"""Active health checks, the same for every upstream kind: each target is probed with
``GET <path>`` through the kind's own ``send`` every ``interval``; ``unhealthy_after`` failed
probes in a row take it out of the rotation, ``healthy_after`` good ones (2xx/3xx) put it back.
Transitions are logged, counted and published as ``target.unhealthy`` / ``target.healthy``
events (by the ``on_change`` callback)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gatewayd.chain.upstream import Target
from gatewayd.config.schema import HealthConfig

log = logging.getLogger("gatewayd.proxy")

# One probe: (status, error); error is None for a good answer.
Probe = Callable[[Target], Awaitable[tuple[int | None, str | None]]]


@dataclass(slots=True)
class ProbeState:
    successes: int = 0
    failures: int = 0
    last_check: float | None = None  # wall clock
    last_error: str | None = None
    last_status: int | None = None


class HealthChecker:
    def __init__(
        self,
        upstream: str,
        config: HealthConfig,
        on_change: Callable[[Target, bool, str], None],
    ) -> None:
        self.upstream = upstream
        self.targets: Callable[[], Sequence[Target]] = tuple
        self.config = config
        self.on_change = on_change
        self.probes: dict[str, ProbeState] = {}
        self.probe: Probe | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, targets: Callable[[], Sequence[Target]], probe: Probe) -> None:
        """Start probing ``targets()`` with ``probe`` (the serving upstream's): a reload hands
        the checker and its counts over to the new generation, which calls this again."""
        self.targets = targets
        self.probe = probe
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            targets = list(self.targets())
            known = {t.id for t in targets}
            for gone in [k for k in self.probes if k not in known]:
                del self.probes[gone]
            await asyncio.gather(*(self.check(t) for t in targets), return_exceptions=True)
            await asyncio.sleep(self.config.interval)

    async def check(self, target: Target) -> None:
        probe = self.probe
        if probe is None:
            return
        state = self.probes.get(target.id)
        if state is None:
            state = self.probes[target.id] = ProbeState()
        try:
            async with asyncio.timeout(self.config.timeout):
                status, error = await probe(target)
        except TimeoutError:
            status, error = None, "timeout"
        except Exception as exc:  # a kind that fails oddly: the probe failed, say how
            log.debug("health probe failed", extra={"upstream": self.upstream, "error": repr(exc)})
            status, error = None, "disconnect"
        if error is None and status is not None and status >= 400:
            error = f"status {status}"
        state.last_check = time.time()
        state.last_error = error
        state.last_status = status
        if error is None:
            state.successes += 1
            state.failures = 0
            if not target.healthy and state.successes >= self.config.healthy_after:
                target.healthy = True
                self.on_change(target, True, "health check passed")
        else:
            state.failures += 1
            state.successes = 0
            if target.healthy and state.failures >= self.config.unhealthy_after:
                target.healthy = False
                self.on_change(target, False, error)

    def snapshot(self, target_id: str) -> dict[str, Any]:
        s = self.probes.get(target_id) or ProbeState()
        return {
            "consecutive_successes": s.successes,
            "consecutive_failures": s.failures,
            "last_check": s.last_check,
            "last_status": s.last_status,
            "last_error": s.last_error,
        }
