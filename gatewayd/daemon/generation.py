"""A generation: everything built from one config (route table, chains, upstream pools).

A reload builds a new generation beside the serving one and swaps one reference; each request
pins the generation it started on; the old one closes once its last request is done.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gatewayd.chain.api import RouteInfo
from gatewayd.chain.builder import ChainBuilder, Forwarder
from gatewayd.chain.handover import Handover, close_objects
from gatewayd.chain.registry import PluginConfigProblems, PluginRegistry
from gatewayd.config.errors import ConfigError
from gatewayd.config.schema import GatewayConfig
from gatewayd.daemon.services import Services
from gatewayd.daemon.upstreams import build_upstream, lease_upstreams
from gatewayd.proxy.dispatch import Dispatcher
from gatewayd.proxy.upstream import ManagedUpstream
from gatewayd.routing.table import RouteTable, make_route

log = logging.getLogger("gatewayd.daemon")


class Generation:
    def __init__(
        self,
        number: int,
        config: GatewayConfig,
        dispatcher: Dispatcher,
        upstreams: dict[str, ManagedUpstream],
        plugins: list[Any],
        handover: Handover,
    ) -> None:
        self.number = number
        self.config = config
        self.dispatcher = dispatcher
        self.upstreams = upstreams
        self.plugins = plugins
        self.handover = handover
        self.inflight = 0
        self.retired = False
        self.drained = asyncio.Event()

    def retire(self) -> None:
        self.retired = True
        if self.inflight == 0:
            self.drained.set()

    async def close(self, abandoned: list[Any] | None = None) -> None:
        """Close plugins, upstream pools and the kept state no successor took over."""
        for plugin in self.plugins:
            try:
                await plugin.close()
            except Exception:
                log.exception("plugin close failed", extra={"plugin": type(plugin).__name__})
        for upstream in self.upstreams.values():
            await upstream.close()
        if self.dispatcher.leases is not None:
            await self.dispatcher.leases.close()
        objects = self.handover.objects.values() if abandoned is None else abandoned
        await close_objects(list(objects))


async def build_generation(
    number: int,
    config: GatewayConfig,
    registry: PluginRegistry,
    services: Services,
    previous: Generation | None,
) -> Generation:
    """Build everything for ``config``; on any failure close what was built and raise."""
    handover = Handover(previous.handover if previous else None)
    forwarder = Forwarder()
    builder = ChainBuilder(registry, services, handover, forwarder)
    upstreams: dict[str, ManagedUpstream] = {}
    try:
        global_ = builder.instantiate(config.plugins, "global", "plugins", None, None)
        routes = []
        for i, rc in enumerate(config.routes):
            entries = builder.instantiate(
                rc.plugins, f"route:{rc.name}", f"routes[{i}].plugins", rc.name, rc.upstream
            )
            info = RouteInfo(rc.name, rc.upstream, rc.match.path.rstrip("/"))
            routes.append(make_route(rc, ChainBuilder.order(global_, entries), info))
        for name, uc in config.upstreams.items():
            upstreams[name] = build_upstream(name, uc, registry, services, handover)
        for upstream in upstreams.values():
            await upstream.start()
        for plugin in builder.instances:
            await plugin.start()
    except BaseException as exc:
        for upstream in upstreams.values():
            await upstream.close()
        for plugin in builder.instances:
            try:
                await plugin.close()
            except Exception:
                log.exception("plugin close failed")
        if previous is None:
            await close_objects(list(handover.objects.values()))
        else:
            await close_objects(handover.abandoned_by(previous.handover))
        if isinstance(exc, PluginConfigProblems):
            raise ConfigError(exc.problems) from None
        raise
    dispatcher = Dispatcher(
        RouteTable(routes),
        upstreams,
        services.metrics,
        services.access_log if config.logging.access_log else None,
        lease_upstreams(services, handover),
        websockets=services.extras.get("websockets"),
        runtime=services.upstreams.serving,
        taps=services.taps,
    )
    forwarder.target = dispatcher.forward
    handover.forget_previous()
    return Generation(number, config, dispatcher, upstreams, builder.instances, handover)
