"""Long-lived services shared by every generation (made once per process, not per reload)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatewayd.config.schema import GatewayConfig, StateConfig
from gatewayd.observability.access import AccessLog
from gatewayd.observability.metrics import Metrics


@dataclass(slots=True)
class Services:
    """What plugins reach through ``PluginContext.services``.

    ``events``: the event bus (publish typed events); ``keys``: the API key store; ``relay``: the
    relay registry; ``stores``: backends for plugin state (memory or Redis); ``extras``: room for
    services that later parts of the daemon add.
    """

    state: StateConfig
    metrics: Metrics
    events: Any = None
    keys: Any = None
    relay: Any = None
    stores: Any = None
    access_log: AccessLog = field(default_factory=AccessLog)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.state.dir

    async def close(self) -> None:
        self.access_log.flush()
        for obj in (self.relay, self.keys, self.stores, self.events):
            close = getattr(obj, "close", None)
            if close is not None:
                await close()


async def build_services(config: GatewayConfig, metrics: Metrics) -> Services:
    """Make the process-wide services once, at start-up. (``state`` changes need a restart.)"""
    services = Services(state=config.state, metrics=metrics)
    services.access_log.fmt = config.logging.format
    from gatewayd.events.bus import EventBus

    services.events = EventBus(config.events.buffer, config.events.queue, metrics.registry)
    from gatewayd.proxy.websocket import WebSocketRegistry

    services.extras["websockets"] = WebSocketRegistry(metrics.registry)
    # Each subsystem adds its service here (event bus, key store, plugin state stores, relay).
    from gatewayd.stores.keys import open_key_store

    services.keys = await open_key_store(config.state, events=lambda: services.events)
    await services.keys.start()
    from gatewayd.stores.state import PluginStores

    services.stores = PluginStores(config.state)
    from gatewayd.relay.registry import RelayRegistry

    services.relay = RelayRegistry(services.keys, events=lambda: services.events)
    return services
