"""The relay registry: lease → peer connections. Process-wide; outlives reloads."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gatewayd.chain.api import RequestContext
from gatewayd.config.schema import RelayConfig, TimeoutsConfig, UpstreamConfig
from gatewayd.proxy.errors import UpstreamError
from gatewayd.relay.connection import PeerConnection
from gatewayd.relay.protocol import Close
from gatewayd.relay.tunnel import RelayUpstream

log = logging.getLogger("gatewayd.relay")
LEASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_IPS = 10_000  # connect-rate buckets kept at most (oldest dropped first)
MAX_ORPHAN_LEASES = 1_000  # leases with failed deliveries but no connection, kept in the stats


def valid_lease(name: str) -> bool:
    return LEASE_RE.match(name) is not None


class ConnectRate:
    """A token bucket per client IP (burst = the rate's count), LRU-bounded."""

    def __init__(self) -> None:
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, ip: str, count: float, period: float) -> bool:
        now = time.monotonic()
        tokens, at = self.buckets.pop(ip, (count, now))
        tokens = min(count, tokens + (now - at) * count / period)
        ok = tokens >= 1
        self.buckets[ip] = (tokens - 1 if ok else tokens, now)
        while len(self.buckets) > MAX_IPS:
            self.buckets.popitem(last=False)
        return ok


@dataclass(slots=True)
class LeaseFailures:
    """Deliveries that found no connection for the lease."""

    events_failed: int = 0
    last_failure_at: float | None = None
    last_failure_reason: str | None = None


class RelayRegistry:
    def __init__(self, keys: Any = None, events: Callable[[], Any] | None = None) -> None:
        self.keys = keys
        self._events = events
        self.leases: dict[str, list[PeerConnection]] = {}
        self.connections: dict[str, PeerConnection] = {}
        self.connect_rate = ConnectRate()
        self.failures: OrderedDict[str, LeaseFailures] = OrderedDict()
        self.seq: dict[str, int] = {}
        self._turn = 0
        self.closing = False
        self.counters = {"refused": 0, "connects": 0, "disconnects": 0}
        if keys is not None and hasattr(keys, "on_revoke"):
            keys.on_revoke(self.revoked)

    # -- upstreams -------------------------------------------------------------------------

    def upstream(self, name: str, config: UpstreamConfig) -> RelayUpstream:
        assert config.relay is not None
        return RelayUpstream(name, config.relay, self)

    def route_upstream(self, ctx: RequestContext, route: Any) -> tuple[Any, TimeoutsConfig, str]:
        """For ``relay: by_path`` routes: ``<prefix>/<lease>/<rest>`` goes to ``/<rest>`` on a
        peer holding ``<lease>``; a route with ``relay: <lease>`` names the lease itself."""
        timeouts = route.config.timeouts or TimeoutsConfig()
        relay = route.config.relay
        path = ctx.request.path
        if relay and relay != "by_path":
            return RelayUpstream(f"relay:{relay}", relay, self), timeouts, route.upstream_path(path)
        rest = path[len(route.prefix) :].lstrip("/")
        lease, _, tail = rest.partition("/")
        if not lease or not valid_lease(lease):
            raise UpstreamError(404, "no_lease", "expected /<lease>/<path> after the route prefix")
        return RelayUpstream(f"relay:{lease}", lease, self), timeouts, "/" + tail

    def pick(self, lease: str, exclude: set[str] | frozenset[str] = frozenset()) -> Any:
        """The usable connection of ``lease`` with the fewest streams in flight (ties rotate)."""
        conns = self.leases.get(lease)
        if not conns:
            return None
        self._turn += 1
        n = len(conns)
        best = None
        for i in range(n):
            c = conns[(self._turn + i) % n]
            if c.usable and c.id not in exclude and (best is None or c.inflight < best.inflight):
                best = c
        return best

    # -- connections -----------------------------------------------------------------------

    def admit(self, ip: str, config: RelayConfig) -> int | None:
        """None to go on, or the close code refusing a new connection from ``ip``."""
        rate = config.connect_rate
        if not self.connect_rate.allow(ip, rate.count, rate.period):
            return Close.RATE_EXCEEDED
        if len(self.connections) >= config.max_connections or self.closing:
            return Close.AT_CAPACITY if not self.closing else Close.GOING_AWAY
        return None

    def add(self, conn: PeerConnection) -> None:
        self.connections[conn.id] = conn
        self.leases.setdefault(conn.lease, []).append(conn)
        self.counters["connects"] += 1
        self._announce(conn, "connected", client_ip=conn.client_ip)

    def remove(self, conn: PeerConnection) -> None:
        if self.connections.pop(conn.id, None) is None:
            return
        conns = self.leases.get(conn.lease, [])
        if conn in conns:
            conns.remove(conn)
        if not conns:
            self.leases.pop(conn.lease, None)
        self.counters["disconnects"] += 1
        self._announce(conn, "disconnected", reason=conn.close_reason)

    def _announce(self, conn: PeerConnection, what: str, **detail: Any) -> None:
        """Log a peer's arrival or departure and publish it as ``relay.peer.<what>``."""
        payload = {"lease": conn.lease, "connection": conn.id, **detail}
        log.info(f"relay peer {what}", extra=payload)
        self.publish(f"relay.peer.{what}", payload, conn.tenant)

    def new_id(self) -> str:
        return uuid.uuid4().hex[:16]

    def revoked(self, key_id: str) -> None:
        """The key store's revocation callback: close that key's connections at once."""
        for conn in list(self.connections.values()):
            if conn.key_id == key_id:
                log.warning(
                    "relay key revoked: closing its connection",
                    extra={"lease": conn.lease, "connection": conn.id, "key_id": key_id},
                )
                task = asyncio.ensure_future(conn.close(Close.UNAUTHORISED, "key revoked"))
                task.add_done_callback(lambda t: t.exception())

    # -- events ----------------------------------------------------------------------------

    def push_event(
        self, lease: str, type_: str, payload: Any, correlation_id: str
    ) -> dict[str, Any] | None:
        """Queue one event for every connection of ``lease``; None when no peer holds it."""
        conns = [c for c in self.leases.get(lease, []) if not c.closed]
        if not conns:
            self.lease_failed(lease, "no_peer")
            return None
        seq = self.seq.get(lease, 0) + 1
        self.seq[lease] = seq
        event = {
            "id": uuid.uuid4().hex,
            "seq": seq,
            "type": type_,
            "time": time.time(),
            "correlation_id": correlation_id,
            "lease": lease,
            "payload": payload,
        }
        queued = sum(1 for c in conns if c.enqueue_event(event))
        if queued < len(conns):
            self.publish(
                "relay.event.failed",
                {"lease": lease, "event": event["id"], "reason": "queue_full"},
                None,
            )
        return {"id": event["id"], "seq": seq, "connections": len(conns), "queued": queued}

    def lease_failed(self, lease: str, reason: str) -> None:
        entry = self.failures.pop(lease, None) or LeaseFailures()
        entry.events_failed += 1
        entry.last_failure_at = time.time()
        entry.last_failure_reason = reason
        self.failures[lease] = entry
        while len(self.failures) > MAX_ORPHAN_LEASES:
            self.failures.popitem(last=False)
        self.publish("relay.event.failed", {"lease": lease, "reason": reason}, None)

    def publish(self, type_: str, payload: dict[str, Any], tenant: str | None) -> None:
        bus = self._events() if self._events is not None else None
        if bus is None:
            return
        try:
            bus.publish(type_, payload, tenant=tenant)
        except Exception:
            log.exception("publishing a relay event failed", extra={"event": type_})

    def stats(self) -> dict[str, Any]:
        leases: dict[str, Any] = {}
        for lease, conns in self.leases.items():
            leases[lease] = {"connections": [c.stats() for c in conns]}
        for lease, f in self.failures.items():
            entry = leases.setdefault(lease, {"connections": []})
            entry.update(
                events_failed_no_peer=f.events_failed,
                last_failure_at=f.last_failure_at,
                last_failure_reason=f.last_failure_reason,
            )
        return {
            "connections": len(self.connections),
            "in_flight": sum(c.inflight for c in self.connections.values()),
            **self.counters,
            "leases": leases,
        }

    # -- lifecycle -------------------------------------------------------------------------

    def endpoint(self, config: RelayConfig) -> Callable[[web.BaseRequest], Awaitable[Any]]:
        from gatewayd.relay.endpoint import RelayEndpoint

        return RelayEndpoint(self, config).handle

    async def close(self) -> None:
        """Close every peer with 1001 (going away): they reconnect to the next process."""
        if self.closing and not self.connections:
            return
        self.closing = True
        conns = list(self.connections.values())
        await asyncio.gather(
            *(c.close(Close.GOING_AWAY, "gateway shutting down") for c in conns),
            return_exceptions=True,
        )
