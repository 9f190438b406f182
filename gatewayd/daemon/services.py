"""Long-lived services shared by every generation (made once per process, not per reload)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatewayd.config.schema import GatewayConfig, StateConfig
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
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.state.dir

    async def close(self) -> None:
        for obj in (self.relay, self.keys, self.stores, self.events):
            close = getattr(obj, "close", None)
            if close is not None:
                await close()


async def build_services(config: GatewayConfig, metrics: Metrics) -> Services:
    """Make the process-wide services once, at start-up. (``state`` changes need a restart.)"""
    services = Services(state=config.state, metrics=metrics)
    # Each subsystem adds its service here (event bus, key store, plugin state stores, relay).
    return services
