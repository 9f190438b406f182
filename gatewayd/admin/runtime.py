"""What the admin API sees of the running daemon, as protocols.

The admin layer sits below the daemon (see the import-linter contracts in pyproject.toml): it
names what it reads and calls of the daemon's own objects by these protocols (the lower layers'
objects by their classes), and :class:`gatewayd.daemon.process.Daemon`
satisfies them (mypy checks that where the daemon builds its admin app).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from gatewayd.chain.upstream import UpstreamDirectory
from gatewayd.config.schema import GatewayConfig
from gatewayd.events.bus import EventBus
from gatewayd.observability.metrics import Metrics
from gatewayd.observability.taps import RequestTaps
from gatewayd.proxy.dispatch import Dispatcher
from gatewayd.relay.registry import RelayRegistry
from gatewayd.stores.keys import KeyStore


class AdminServices(Protocol):
    """The process-wide services the admin API uses."""

    @property
    def keys(self) -> KeyStore: ...

    @property
    def events(self) -> EventBus: ...

    @property
    def relay(self) -> RelayRegistry: ...

    @property
    def upstreams(self) -> UpstreamDirectory: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def taps(self) -> RequestTaps: ...

    @property
    def extras(self) -> dict[str, Any]: ...


class ServingGeneration(Protocol):
    """One config generation: its number, route table, upstreams and plugin instances."""

    @property
    def number(self) -> int: ...

    @property
    def dispatcher(self) -> Dispatcher: ...

    @property
    def upstreams(self) -> Mapping[str, Any]: ...

    @property
    def plugins(self) -> Sequence[Any]: ...


class ServingGateway(Protocol):
    @property
    def current(self) -> ServingGeneration: ...


class AdminRuntime(Protocol):
    """The daemon, as the admin API reads and drives it."""

    @property
    def ready(self) -> bool: ...

    @property
    def started_at(self) -> float:
        """When the process started (``time.time()``)."""
        ...

    @property
    def config(self) -> GatewayConfig | None: ...

    @property
    def config_path(self) -> Path: ...

    @property
    def generation_number(self) -> int: ...

    @property
    def services(self) -> AdminServices | None: ...

    @property
    def gateway(self) -> ServingGateway | None: ...

    async def reload(self) -> bool:
        """Like SIGHUP: True when the new config serves, False when it was refused."""
        ...
