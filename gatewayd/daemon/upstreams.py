"""Building a generation's upstreams: each configured one as a :class:`ManagedUpstream` over its
kind (``http``, ``relay`` or a kind from a plugin distribution), and the lease upstreams of
``relay:`` routes. State that must outlive a reload (HTTP targets' health and ejection, the
retry budget, a kind's own kept objects) is handed over while the upstream's config is
unchanged."""

from __future__ import annotations

import logging
from typing import Any

from gatewayd.chain.handover import Handover
from gatewayd.chain.registry import PluginRegistry
from gatewayd.chain.upstream import UpstreamContext, UpstreamKind
from gatewayd.config.schema import (
    HttpUpstreamConfig,
    RelayUpstreamConfig,
    TimeoutsConfig,
    UpstreamConfig,
)
from gatewayd.daemon.services import Services
from gatewayd.proxy.http_kind import HttpUpstream, PooledHttpClient
from gatewayd.proxy.leases import LeaseUpstreams
from gatewayd.proxy.upstream import ManagedUpstream, UpstreamState


def build_upstream(
    name: str,
    config: UpstreamConfig,
    registry: PluginRegistry,
    services: Services,
    handover: Handover,
) -> ManagedUpstream:
    """Raises ``PluginConfigProblems`` for an unknown kind or a config its kind refuses."""
    ktype, kconfig = registry.validate_upstream(config, f"upstreams.{name}")
    key = f"upstream:{name}/{kconfig.model_dump_json()}"
    context = UpstreamContext(
        services,
        logging.getLogger(f"gatewayd.upstreams.{name}"),
        lambda k, factory: handover.keep(f"{key}#{k}", factory),
        lambda pool: PooledHttpClient(name, pool),
    )
    impl: UpstreamKind
    if isinstance(kconfig, HttpUpstreamConfig):
        impl = HttpUpstream(name, kconfig, context)
    elif isinstance(kconfig, RelayUpstreamConfig):
        impl = relay_kind(services, name, kconfig.relay)
    else:
        assert ktype is not None
        impl = ktype.cls(name, kconfig, context)
    state = handover.keep(f"{key}#state", lambda: UpstreamState(name, kconfig, services))
    return ManagedUpstream(name, impl, kconfig, state)


def relay_kind(services: Services, name: str, lease: str) -> Any:
    if services.relay is None:
        raise RuntimeError("relay upstreams need the relay registry")
    from gatewayd.relay.tunnel import RelayLeaseUpstream

    return RelayLeaseUpstream(name, lease, services.relay)


def lease_upstreams(services: Services, handover: Handover) -> LeaseUpstreams | None:
    """The upstreams of ``relay:`` routes, one per lease with peers (see LeaseUpstreams)."""
    relay = services.relay
    if relay is None:
        return None
    config = RelayUpstreamConfig(relay="by-path", timeouts=TimeoutsConfig())

    def make(lease: str) -> ManagedUpstream | None:
        if not relay.leases.get(lease):
            return None
        name = f"relay:{lease}"
        impl = relay.lease_upstream(lease)
        # Keyed by lease, not by generation: ejections and the like survive a reload.
        state = handover.keep(f"lease:{lease}#state", lambda: UpstreamState(name, config, services))
        return ManagedUpstream(name, impl, config, state)

    return LeaseUpstreams(make)
