"""What the admin API sees of the running daemon, as protocols.

The admin layer sits below the daemon (see the import-linter contracts in pyproject.toml): it
names what it reads and calls by these protocols, and :class:`gatewayd.daemon.process.Daemon`
satisfies them (mypy checks that where the daemon builds its admin app).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from gatewayd.config.schema import GatewayConfig
from gatewayd.events.bus import EventBus
from gatewayd.routing.table import RouteTable
from gatewayd.stores.keys import KeyStore


class RelayAdmin(Protocol):
    """The relay registry's admin side: push an event to a lease, read the statistics."""

    def push_event(
        self, lease: str, type_: str, payload: Any, correlation_id: str
    ) -> dict[str, Any] | None: ...

    def stats(self) -> dict[str, Any]: ...


class AdminServices(Protocol):
    """The process-wide services the admin API uses."""

    @property
    def keys(self) -> KeyStore: ...

    @property
    def events(self) -> EventBus: ...

    @property
    def relay(self) -> RelayAdmin: ...


class RoutedDispatcher(Protocol):
    @property
    def table(self) -> RouteTable: ...


class ServingGeneration(Protocol):
    """One config generation: its number, route table, upstreams and plugin instances."""

    @property
    def number(self) -> int: ...

    @property
    def dispatcher(self) -> RoutedDispatcher: ...

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
