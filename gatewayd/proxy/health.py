"""Active health checks: each target of an upstream is probed with ``GET <path>`` every
``interval``; ``unhealthy_after`` failed probes in a row take it out of the rotation,
``healthy_after`` good ones (2xx/3xx) put it back. Transitions are logged, counted and published
as ``target.unhealthy`` / ``target.healthy`` events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from gatewayd.config.schema import HealthConfig
from gatewayd.proxy.balancer import Target

log = logging.getLogger("gatewayd.proxy")


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
        targets: list[Target],
        config: HealthConfig,
        on_change: Callable[[Target, bool, str], None],
    ) -> None:
        self.upstream = upstream
        self.targets = targets
        self.config = config
        self.on_change = on_change
        self.probes = {t.url: ProbeState() for t in targets}
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        if self._tasks:
            return
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._tasks = [asyncio.create_task(self._run(t)) for t in self.targets]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self, target: Target) -> None:
        while True:
            await self.check(target)
            await asyncio.sleep(self.config.interval)

    async def check(self, target: Target) -> None:
        assert self._session is not None
        state = self.probes[target.url]
        error: str | None = None
        status: int | None = None
        try:
            async with self._session.get(target.url + self.config.path) as resp:
                status = resp.status
                await resp.read()
                if status >= 400:
                    error = f"status {status}"
        except TimeoutError:
            error = "timeout"
        except aiohttp.ClientError as exc:
            error = "connect" if isinstance(exc, aiohttp.ClientConnectorError) else "disconnect"
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

    def snapshot(self, url: str) -> dict[str, Any]:
        s = self.probes[url]
        return {
            "consecutive_successes": s.successes,
            "consecutive_failures": s.failures,
            "last_check": s.last_check,
            "last_status": s.last_status,
            "last_error": s.last_error,
        }
