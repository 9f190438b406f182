"""The serving reference: the current generation, swapped in one assignment on reload."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from aiohttp import web

from gatewayd.daemon.generation import Generation
from gatewayd.observability.metrics import Metrics

log = logging.getLogger("gatewayd.daemon")


class Gateway:
    def __init__(self, generation: Generation, metrics: Metrics) -> None:
        self.current = generation
        self.metrics = metrics
        self.draining: set[Generation] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        metrics.generation.set(generation.number)

    def handle(self, raw: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        """The listener's handler: the serving generation's dispatcher takes the request and
        pins its generation until the reply is done (no extra coroutine layer here)."""
        return self.current.dispatcher.handle(raw)

    @property
    def inflight(self) -> int:
        return self.current.inflight + sum(g.inflight for g in self.draining)

    def swap(self, new: Generation) -> Generation:
        old, self.current = self.current, new
        self.metrics.generation.set(new.number)
        abandoned = old.handover.abandoned_by(new.handover)
        self.draining.add(old)
        self.metrics.generations_draining.set(len(self.draining))
        old.retire()
        task = asyncio.create_task(self._close_when_drained(old, abandoned))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return old

    async def _close_when_drained(self, gen: Generation, abandoned: list[object]) -> None:
        await gen.drained.wait()
        try:
            await gen.close(abandoned)
        finally:
            self.draining.discard(gen)
            self.metrics.generations_draining.set(len(self.draining))
            log.info("generation closed", extra={"generation": gen.number})

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight in any generation; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.inflight > 0:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for gen in list(self.draining):
            await gen.close()
        self.draining.clear()
        await self.current.close()
