"""Long-lived services shared by every generation (made once per process, not per reload)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gatewayd.config.schema import GatewayConfig, StateConfig
from gatewayd.events.bus import EventBus
from gatewayd.observability.access import AccessLog
from gatewayd.observability.metrics import Metrics
from gatewayd.observability.taps import RequestTaps
from gatewayd.proxy.runtime_upstreams import RuntimeUpstreams
from gatewayd.relay.registry import RelayRegistry
from gatewayd.stores.keys import KeyStore
from gatewayd.stores.state import PluginStores

if TYPE_CHECKING:
    from gatewayd.chain.services import PluginServices


@dataclass(slots=True)
class Services:
    """What plugins reach through ``PluginContext.services`` (typed for them by
    :class:`gatewayd.chain.PluginServices`, which this class satisfies), and more.

    ``events``: the event bus (publish typed events); ``keys``: the API key store; ``relay``: the
    relay registry; ``upstreams``: the upstreams added at run time; ``stores``: backends for
    plugin state (memory or Redis); ``extras``: room for services that later parts of the daemon
    add.
    """

    state: StateConfig
    metrics: Metrics
    events: EventBus
    keys: KeyStore
    stores: PluginStores
    relay: RelayRegistry
    upstreams: RuntimeUpstreams
    access_log: AccessLog = field(default_factory=AccessLog)
    taps: RequestTaps = field(default_factory=RequestTaps)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.state.dir

    async def close(self) -> None:
        self.access_log.flush()
        await self.upstreams.close()
        await self.relay.close()
        await self.keys.close()
        await self.stores.close()
        await self.events.close()


async def build_services(config: GatewayConfig, metrics: Metrics) -> Services:
    """Make the process-wide services once, at start-up. (``state`` changes need a restart.)"""
    events = EventBus(config.events.buffer, config.events.queue, metrics.registry)
    from gatewayd.chain.registry import PluginRegistry
    from gatewayd.daemon.upstreams import build_upstream
    from gatewayd.proxy.websocket import WebSocketRegistry
    from gatewayd.relay.metrics import RelayCollector
    from gatewayd.stores.keys import open_key_store

    keys = await open_key_store(config.state, events=lambda: events)
    await keys.start()
    services = Services(
        state=config.state,
        metrics=metrics,
        events=events,
        keys=keys,
        stores=PluginStores(config.state),
        relay=RelayRegistry(keys, events=lambda: events),
        upstreams=RuntimeUpstreams(
            lambda name, config, registry, handover: build_upstream(
                name, config, registry, services, handover
            ),
            PluginRegistry.discover(),
        ),
    )
    services.upstreams.set_configured(frozenset(config.upstreams), services.upstreams.registry)
    services.access_log.fmt = config.logging.format
    services.extras["websockets"] = WebSocketRegistry(metrics.registry)
    metrics.tenants.top = config.metrics.top_tenants
    metrics.add_collector(RelayCollector(services.relay))
    return services


def _satisfies(services: Services) -> PluginServices:
    """Checked by mypy: the daemon's services are what ``PluginContext.services`` promises."""
    return services
