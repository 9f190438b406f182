"""The public listeners: one aiohttp low-level server, one site per configured address."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

from gatewayd.config.schema import ListenerConfig, ServerConfig, parse_address
from gatewayd.daemon.tls import load_into, make_context

log = logging.getLogger("gatewayd.daemon")


class Listeners:
    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        server: ServerConfig,
    ) -> None:
        self.server = web.Server(
            handler,
            handler_cancellation=True,
            max_line_size=server.max_header_size,
            max_field_size=server.max_header_size,
            keepalive_timeout=server.keepalive_timeout,
            access_log=None,
        )
        self.runner = web.ServerRunner(self.server, handle_signals=False, shutdown_timeout=1.0)
        self.sites: dict[str, tuple[web.TCPSite, ListenerConfig, ssl.SSLContext | None]] = {}

    async def setup(self) -> None:
        await self.runner.setup()

    def prepare_tls(self, listeners: list[ListenerConfig]) -> dict[str, ssl.SSLContext | None]:
        """Load every certificate first (a bad one fails the reload before anything changes)."""
        out: dict[str, ssl.SSLContext | None] = {}
        for i, lc in enumerate(listeners):
            if lc.tls is None:
                out[lc.address] = None
                continue
            existing = self.sites.get(lc.address)
            if existing is not None and existing[2] is not None:
                # Same listener, TLS before and after: re-read into the live context.
                load_into(existing[2], lc.tls, f"listen[{i}].tls")
                out[lc.address] = existing[2]
            else:
                out[lc.address] = make_context(lc.tls, f"listen[{i}].tls")
        return out

    async def apply(self, listeners: list[ListenerConfig]) -> None:
        tls = self.prepare_tls(listeners)
        wanted = {lc.address: lc for lc in listeners}
        for address, (site, _lc, ctx) in list(self.sites.items()):
            if address not in wanted or (ctx is None) != (tls[address] is None):
                await site.stop()
                del self.sites[address]
                log.info("listener stopped", extra={"address": address})
        for address, lc in wanted.items():
            if address in self.sites:
                self.sites[address] = (self.sites[address][0], lc, tls[address])
                continue
            host, port = parse_address(address)
            site = web.TCPSite(
                self.runner, host, port, ssl_context=tls[address], reuse_address=True, backlog=1024
            )
            await site.start()
            self.sites[address] = (site, lc, tls[address])
            log.info("listening", extra={"address": address, "tls": tls[address] is not None})

    async def stop_accepting(self) -> None:
        for site, _, _ in self.sites.values():
            await site.stop()
        self.sites.clear()

    async def close(self) -> None:
        await self.runner.cleanup()
