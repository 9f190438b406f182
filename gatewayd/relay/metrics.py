"""The relay's metrics, read from the registry when /metrics is scraped (nothing is counted on
the tunnel's path but two integers per WebSocket message, on the connection).

- ``gatewayd_relay_peers{lease}``: peer identities with an open connection; a lease that lost
  its peers lately (kept by the registry, bounded) shows 0.
- ``gatewayd_relay_connections``, ``gatewayd_relay_streams_open``: now.
- ``gatewayd_relay_streams_total``, ``gatewayd_relay_bytes_total{direction}``,
  ``gatewayd_relay_events_total{result}``: since start, connections gone included (so they
  are counters), deliveries that found no peer counted as failed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gatewayd.relay.registry import RelayRegistry, RelayTotals


class RelayCollector:
    def __init__(self, registry: RelayRegistry) -> None:
        self.relay = registry

    def describe(self) -> list[Any]:
        return []

    def totals(self) -> RelayTotals:
        out = dataclasses.replace(self.relay.gone)
        for conn in self.relay.connections.values():
            out.add(conn)
        return out

    def collect(self) -> Iterator[Any]:
        relay = self.relay
        peers = GaugeMetricFamily(
            "gatewayd_relay_peers",
            "Peer identities with an open connection, by lease (0: the lease lost its peers)",
            labels=["lease"],
        )
        for lease in relay.idle:
            peers.add_metric([lease], 0)
        for lease, held in relay.leases.items():
            peers.add_metric([lease], sum(1 for i in held.identities.values() if i.conns))
        yield peers
        yield GaugeMetricFamily(
            "gatewayd_relay_connections",
            "Open relay peer connections",
            value=len(relay.connections),
        )
        yield GaugeMetricFamily(
            "gatewayd_relay_streams_open",
            "Tunnel streams open (requests and WebSockets in flight over relay connections)",
            value=sum(c.inflight for c in relay.connections.values()),
        )
        totals = self.totals()
        yield CounterMetricFamily(
            "gatewayd_relay_streams",
            "Tunnel streams opened over relay connections",
            value=totals.streams,
        )
        traffic = CounterMetricFamily(
            "gatewayd_relay_bytes",
            "Bytes of relay frames, by direction (in: from peers, out: to peers)",
            labels=["direction"],
        )
        traffic.add_metric(["in"], totals.bytes_in)
        traffic.add_metric(["out"], totals.bytes_out)
        yield traffic
        events = CounterMetricFamily(
            "gatewayd_relay_events",
            "Events pushed to relay peers, by result (sent, acked, failed: not delivered,"
            " no peer included)",
            labels=["result"],
        )
        events.add_metric(["sent"], totals.events_sent)
        events.add_metric(["acked"], totals.events_acked)
        events.add_metric(["failed"], totals.events_failed)
        yield events
