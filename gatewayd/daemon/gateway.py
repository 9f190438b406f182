"""The process-wide gateway: the serving generation (swapped in one assignment on reload), the
pinning of each request to the generation it started on, and the relay endpoint (whose
connections live across reloads, so they pin no generation)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from multidict import CIMultiDict

from gatewayd.config.schema import GatewayConfig
from gatewayd.daemon.generation import Generation
from gatewayd.daemon.services import Services
from gatewayd.observability.metrics import Metrics
from gatewayd.proxy.client_ip import ListenerTrust, client_ip

log = logging.getLogger("gatewayd.daemon")


RelayEndpoint = Callable[[web.BaseRequest, str], Awaitable[web.StreamResponse]]


def relay_endpoint(services: Services, config: GatewayConfig) -> tuple[str, RelayEndpoint] | None:
    """The relay's endpoint for ``config`` (its path and settings apply to new connections)."""
    if services.relay is None:
        return None
    return config.relay.path, services.relay.endpoint(config.relay)


class Gateway:
    def __init__(
        self,
        generation: Generation,
        metrics: Metrics,
        relay: tuple[str, RelayEndpoint] | None = None,
    ) -> None:
        self.current = generation
        self.metrics = metrics
        self.server_header = self.serve_header(generation)
        # (relay.path, handler): the relay's WebSocket endpoint, served before route matching.
        self.relay = relay
        self.draining: set[Generation] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        metrics.generation.set(generation.number)

    async def handle(
        self, raw: web.BaseRequest, listener: ListenerTrust | None = None
    ) -> web.StreamResponse:
        """The listener's handler: the relay endpoint, or the serving generation's dispatcher
        with the generation pinned until the reply is done."""
        relay = self.relay
        if relay is not None and raw.raw_path.partition("?")[0] == relay[0]:
            ip = client_ip(raw.transport, CIMultiDict(raw.headers), listener)
            resp = await relay[1](raw, ip)
            # A WebSocket (prepared) got it from the listener's writer; a refusal gets it here.
            if self.server_header is not None and not resp.prepared:
                resp.headers["Server"] = self.server_header
            return resp
        gen = self.current
        gen.inflight += 1
        try:
            return await gen.dispatcher.handle(raw, listener)
        finally:
            gen.inflight -= 1
            if gen.retired and gen.inflight == 0:
                gen.drained.set()

    @staticmethod
    def serve_header(gen: Generation) -> str | None:
        """Hand ``server.header`` to the generation's dispatcher (None: no header at all)."""
        value = gen.config.server.header or None
        gen.dispatcher.server_header = value
        return value

    @property
    def inflight(self) -> int:
        return self.current.inflight + sum(g.inflight for g in self.draining)

    def swap(self, new: Generation, relay: tuple[str, RelayEndpoint] | None = None) -> Generation:
        self.server_header = self.serve_header(new)
        old, self.current = self.current, new
        if relay is not None:
            self.relay = relay
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
