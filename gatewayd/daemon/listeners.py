"""The public listeners: one site per configured address, each with its own aiohttp low-level
server, so that a request knows the listener it came in on (its trusted proxies)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

from gatewayd.config.schema import ListenerConfig, ServerConfig, parse_address
from gatewayd.daemon.protocol import GuardedServer, ProtocolGuard, RefusedRequest
from gatewayd.daemon.tls import load_into, make_context
from gatewayd.observability.metrics import Metrics
from gatewayd.proxy.client_ip import ListenerTrust

log = logging.getLogger("gatewayd.daemon")

Handler = Callable[[web.BaseRequest, ListenerTrust | None], Awaitable[web.StreamResponse]]


class Listener:
    """One address: its server, runner and site, its TLS context and its current trust."""

    __slots__ = ("config", "guard", "handler", "runner", "site", "tls", "trust")

    def __init__(
        self,
        handler: Handler,
        config: ListenerConfig,
        tls: ssl.SSLContext | None,
        guard: ProtocolGuard,
    ):
        self.handler = handler
        self.guard = guard
        self.config = config
        self.tls = tls
        self.trust = ListenerTrust.of(config)
        self.runner: web.ServerRunner | None = None
        self.site: web.TCPSite | None = None

    def handle(self, raw: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        """The server's handler: the gateway's, told which listener's trust applies (a plain
        call, no coroutine layer of its own). Reads ``self.trust`` per request, so a reload
        that changes it applies to connections already open. A request the guard's request
        factory refused (HTTP/0.9, too many header bytes, ...) is answered by the guard."""
        if raw.__class__ is RefusedRequest:
            return self.guard.answer(raw)
        return self.handler(raw, self.trust)

    def update(self, config: ListenerConfig, tls: ssl.SSLContext | None) -> None:
        self.config = config
        self.tls = tls
        self.trust = ListenerTrust.of(config)


class Listeners:
    def __init__(
        self, handler: Handler, server: ServerConfig, metrics: Metrics | None = None
    ) -> None:
        self.handler = handler
        self.server_config = server
        # Protocol errors of every listener: their replies, log and counter, the Server header.
        self.guard = ProtocolGuard(server, metrics.protocol_errors if metrics else None)
        self.listeners: dict[str, Listener] = {}
        # Runners of listeners that were stopped: their open connections are served to the end
        # (a reload drops no request) and closed with the rest at shutdown.
        self.retired: list[web.ServerRunner] = []

    async def setup(self) -> None:
        """Nothing to do before :meth:`apply` (each listener sets up its own server)."""

    def prepare_tls(self, listeners: list[ListenerConfig]) -> dict[str, ssl.SSLContext | None]:
        """Load every certificate first (a bad one fails the reload before anything changes)."""
        out: dict[str, ssl.SSLContext | None] = {}
        for i, lc in enumerate(listeners):
            if lc.tls is None:
                out[lc.address] = None
                continue
            existing = self.listeners.get(lc.address)
            if existing is not None and existing.tls is not None:
                # Same listener, TLS before and after: re-read into the live context.
                load_into(existing.tls, lc.tls, f"listen[{i}].tls")
                out[lc.address] = existing.tls
            else:
                out[lc.address] = make_context(lc.tls, f"listen[{i}].tls")
        return out

    async def apply(
        self, listeners: list[ListenerConfig], server: ServerConfig | None = None
    ) -> None:
        """Start, stop and update listeners to match ``listeners``. ``server`` (on reload): its
        Server header and total header limit apply at once, to open connections too; the
        parser's limits (request line, field size, count) to listeners started from now on."""
        tls = self.prepare_tls(listeners)
        if server is not None:
            self.server_config = server
            self.guard.configure(server)
        wanted = {lc.address: lc for lc in listeners}
        for address, listener in list(self.listeners.items()):
            if address not in wanted or (listener.tls is None) != (tls[address] is None):
                await self._stop(listener)
                del self.listeners[address]
                log.info("listener stopped", extra={"address": address})
        for address, lc in wanted.items():
            existing = self.listeners.get(address)
            if existing is not None:
                existing.update(lc, tls[address])
                continue
            listener = Listener(self.handler, lc, tls[address], self.guard)
            await self._start(listener)
            self.listeners[address] = listener
            log.info(
                "listening",
                extra={
                    "address": address,
                    "tls": tls[address] is not None,
                    "trusted_proxies": len(lc.trusted_proxies),
                    "trusted_hops": lc.trusted_hops,
                },
            )

    async def _start(self, listener: Listener) -> None:
        cfg = self.server_config
        server = GuardedServer(
            listener.handle,
            self.guard,
            handler_cancellation=True,
            max_line_size=cfg.max_request_line,
            max_field_size=cfg.max_header_size,
            max_headers=cfg.max_headers,
            keepalive_timeout=cfg.keepalive_timeout,
            access_log=None,
        )
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        host, port = parse_address(listener.config.address)
        site = web.TCPSite(
            runner, host, port, ssl_context=listener.tls, reuse_address=True, backlog=1024
        )
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        listener.runner, listener.site = runner, site

    async def _stop(self, listener: Listener) -> None:
        if listener.site is not None:
            await listener.site.stop()
            listener.site = None
        if listener.runner is not None:
            self.retired.append(listener.runner)
            listener.runner = None

    async def stop_accepting(self) -> None:
        for listener in self.listeners.values():
            await self._stop(listener)
        self.listeners.clear()

    async def close(self) -> None:
        runners = self.retired + [lr.runner for lr in self.listeners.values() if lr.runner]
        self.retired, self.listeners = [], {}
        await asyncio.gather(*(r.cleanup() for r in runners))
        self.guard.close()
