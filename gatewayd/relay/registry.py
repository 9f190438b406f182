"""The relay registry: lease → peer connections. Process-wide; outlives reloads."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gatewayd.chain.upstream import Target
from gatewayd.config.schema import RelayConfig
from gatewayd.relay import protocol as p
from gatewayd.relay.connection import PeerConnection
from gatewayd.relay.peers import LeasePeers, PeerIdentity
from gatewayd.relay.protocol import Close, FrameType
from gatewayd.relay.tunnel import RelayLeaseUpstream

log = logging.getLogger("gatewayd.relay")
LEASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_IPS = 10_000  # connect-rate buckets kept at most (oldest dropped first)
MAX_IDLE_LEASES = 1_000  # leases without a connection kept (their identities, stats, seq)
LOGGED_FAILURES = 10  # failed deliveries logged one by one per occasion; the rest summed up


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


class EventTooLarge(Exception):
    """An event whose EVENT frame would be over a peer's max_frame (the API answers 413)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the event needs a {size}-byte relay frame, over relay.max_frame ({limit} bytes): "
            "send a smaller payload (relay.max_event_bytes should leave room below "
            "relay.max_frame for the event's id, type, time, correlation id and lease)"
        )
        self.size = size
        self.limit = limit


@dataclass(slots=True)
class RelayTotals:
    """Counts summed over connections (see :attr:`RelayRegistry.gone`)."""

    streams: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    events_sent: int = 0
    events_acked: int = 0
    events_failed: int = 0

    def add(self, conn: PeerConnection) -> None:
        self.streams += conn.streams_total
        self.bytes_in += conn.bytes_in
        self.bytes_out += conn.bytes_out
        delivery = conn.delivery
        self.events_sent += delivery.events_sent
        self.events_acked += delivery.events_acked
        self.events_failed += delivery.events_failed


class RelayRegistry:
    def __init__(self, keys: Any = None, events: Callable[[], Any] | None = None) -> None:
        self.keys = keys
        self._events = events
        # Leases with connections, and (bounded, least recently used first) leases without:
        # their identities (targets), delivery statistics and event sequence outlive a reconnect.
        self.leases: dict[str, LeasePeers] = {}
        self.idle: OrderedDict[str, LeasePeers] = OrderedDict()
        self.connections: dict[str, PeerConnection] = {}
        self.connect_rate = ConnectRate()
        self.closing = False
        self.counters = {"refused": 0, "connects": 0, "disconnects": 0}
        # What the connections that are gone did (and deliveries that found no peer): with the
        # live connections' counts, the relay's counters (gatewayd.relay.metrics).
        self.gone = RelayTotals()
        if keys is not None and hasattr(keys, "on_revoke"):
            keys.on_revoke(self.revoked)

    # -- upstreams -------------------------------------------------------------------------

    def lease_upstream(self, lease: str) -> RelayLeaseUpstream:
        """The upstream of ``lease`` for ``relay: by_path`` routes: cached while the lease is
        known (has peers, or had them lately: bounded); a lease nobody holds gets a fresh one
        that is not kept, so lease names in request paths cannot grow memory."""
        peers = self.leases.get(lease) or self.idle.get(lease)
        if peers is None:
            return RelayLeaseUpstream(f"relay:{lease}", lease, self)
        if peers.upstream is None:
            peers.upstream = RelayLeaseUpstream(f"relay:{lease}", lease, self)
        return peers.upstream

    def targets(self, lease: str) -> Sequence[Target]:
        peers = self.leases.get(lease)
        return peers.targets() if peers is not None else ()

    def identity(self, lease: str, target_id: str) -> PeerIdentity | None:
        peers = self.leases.get(lease)
        return peers.identities.get(target_id) if peers is not None else None

    def _lease(self, lease: str) -> LeasePeers:
        """The lease's record, made (idle) if unknown."""
        peers = self.leases.get(lease)
        if peers is None:
            peers = self.idle.pop(lease, None) or LeasePeers(lease)
            self.idle[lease] = peers
            while len(self.idle) > MAX_IDLE_LEASES:
                self.idle.popitem(last=False)
        return peers

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
        peers = self.leases.get(conn.lease)
        if peers is None:
            peers = self.idle.pop(conn.lease, None) or LeasePeers(conn.lease)
            self.leases[conn.lease] = peers
        conn.identity = peers.join(conn)
        conn.on_event_failed = self.event_failed
        self.counters["connects"] += 1
        self._announce(conn, "connected", client_ip=conn.client_ip)

    def remove(self, conn: PeerConnection) -> None:
        if self.connections.pop(conn.id, None) is None:
            return
        peers = self.leases.get(conn.lease)
        if peers is not None:
            peers.leave(conn)
            if not peers.active:  # kept a while: a reconnect finds its target and stats
                del self.leases[conn.lease]
                self.idle[conn.lease] = peers
                while len(self.idle) > MAX_IDLE_LEASES:
                    self.idle.popitem(last=False)
        self.counters["disconnects"] += 1
        self.gone.add(conn)
        self._announce(conn, "disconnected", reason=conn.close_reason)

    def _announce(self, conn: PeerConnection, what: str, **detail: Any) -> None:
        """Log a peer's arrival or departure and publish it as ``relay.peer.<what>``."""
        payload = {
            "lease": conn.lease,
            "connection": conn.id,
            "peer": f"{conn.key_id}/{conn.peer}",
            **detail,
        }
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
        self, lease: str, type_: str, payload: Any, correlation_id: str, max_frame: int
    ) -> dict[str, Any] | None:
        """Queue one event for every connection of ``lease``; None when no peer holds it.
        Raises :class:`EventTooLarge` (nothing queued or counted) when its frame would be over
        ``max_frame`` or over the max_frame a connection of the lease was given."""
        peers = self.leases.get(lease)
        conns = [c for c in peers.connections if not c.closed] if peers is not None else []
        seq = (peers.seq if peers is not None else 0) + 1
        event_id = uuid.uuid4().hex
        event = {
            "id": event_id,
            "seq": seq,
            "type": type_,
            "time": time.time(),
            "correlation_id": correlation_id,
            "lease": lease,
            "payload": payload,
        }
        frame = p.encode_json(0, FrameType.EVENT, event)
        limit = min([max_frame, *(c.config.max_frame for c in conns)])
        if len(frame) - p.HEADER_SIZE > limit:
            raise EventTooLarge(len(frame) - p.HEADER_SIZE, limit)
        if peers is None or not conns:
            record = self._lease(lease)
            record.no_peer.failed("no_peer")
            self.gone.events_failed += 1
            self._failure_logged(lease, None, [event_id], "no_peer")
            return None
        peers.seq = seq
        queued = sum(1 for c in conns if c.enqueue_event(event_id, seq, frame))
        return {"id": event_id, "seq": seq, "connections": len(conns), "queued": queued}

    def event_failed(self, conn: PeerConnection, ids: list[str], reason: str) -> None:
        """A connection could not deliver events (its failure hook)."""
        self._failure_logged(conn.lease, f"{conn.key_id}/{conn.peer}", ids, reason, conn.tenant)

    def _failure_logged(
        self,
        lease: str,
        peer: str | None,
        ids: list[str],
        reason: str,
        tenant: str | None = None,
    ) -> None:
        """Log each failed delivery at WARNING (the first few one by one, then a summary) and
        publish ``relay.event.failed``."""
        for event_id in ids[:LOGGED_FAILURES]:
            log.warning(
                "relay event delivery failed",
                extra={"lease": lease, "peer": peer, "event_id": event_id, "reason": reason},
            )
            self.publish(
                "relay.event.failed",
                {"lease": lease, "peer": peer, "event": event_id, "reason": reason},
                tenant,
            )
        if len(ids) > LOGGED_FAILURES:
            rest = ids[LOGGED_FAILURES:]
            log.warning(
                "relay event deliveries failed",
                extra={
                    "lease": lease,
                    "peer": peer,
                    "count": len(rest),
                    "first_event_id": rest[0],
                    "last_event_id": rest[-1],
                    "reason": reason,
                },
            )
            self.publish(
                "relay.event.failed",
                {"lease": lease, "peer": peer, "events": len(rest), "reason": reason},
                tenant,
            )

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
        for lease, peers in self.idle.items():
            leases[lease] = peers.stats()
        for lease, peers in self.leases.items():
            leases[lease] = peers.stats()
        return {
            "connections": len(self.connections),
            "in_flight": sum(c.inflight for c in self.connections.values()),
            **self.counters,
            "leases": leases,
        }

    # -- lifecycle -------------------------------------------------------------------------

    def endpoint(self, config: RelayConfig) -> Callable[[web.BaseRequest, str], Awaitable[Any]]:
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
