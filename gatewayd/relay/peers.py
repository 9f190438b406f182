"""Who holds a lease: peer identities (``<key id>/<peer name>``), each one target of the lease's
upstream, with its connections and its event delivery statistics. An identity outlives its
connections (kept, bounded, after it leaves), so a reconnect finds the same target and the same
statistics (docs/relay-protocol.md, "Peer identity")."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from gatewayd.chain.upstream import Target

if TYPE_CHECKING:
    from gatewayd.relay.connection import PeerConnection
    from gatewayd.relay.tunnel import RelayLeaseUpstream

DEFAULT_PEER = "default"
MAX_IDENTITIES = 100  # identities of one lease kept after they left (oldest dropped first)


@dataclass(slots=True)
class Delivery:
    """Event delivery counts (of a connection, or of an identity across its connections)."""

    events_sent: int = 0
    events_acked: int = 0
    events_failed: int = 0
    last_failure_at: float | None = None
    last_failure_reason: str | None = None

    def failed(self, reason: str, count: int = 1) -> None:
        self.events_failed += count
        self.last_failure_at = time.time()
        self.last_failure_reason = reason

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class PeerIdentity:
    """One identity holding one lease: its target (the same object for as long as the lease
    keeps it), its live connections, its delivery statistics."""

    __slots__ = ("_turn", "conns", "delivery", "id", "key_id", "lease", "name", "target")

    def __init__(self, lease: str, key_id: str, name: str) -> None:
        self.lease = lease
        self.key_id = key_id
        self.name = name
        self.id = f"{key_id}/{name}"
        self.target = Target(self.id)
        self.conns: list[PeerConnection] = []
        self.delivery = Delivery()
        self._turn = 0
        self.refresh()

    def refresh(self) -> None:
        """Update what the admin view shows of the target."""
        conns = self.conns
        self.target.info = {
            "lease": self.lease,
            "peer": self.name,
            "key_id": self.key_id,
            "connections": len(conns),
            "connection_ids": [c.id for c in conns],
            "client_ip": conns[-1].client_ip if conns else None,
        }

    @property
    def usable(self) -> bool:
        return any(c.usable for c in self.conns)

    def pick(self, tried: set[str]) -> PeerConnection | None:
        """The usable connection with the fewest streams in flight, not in ``tried`` (ties
        rotate)."""
        conns = self.conns
        n = len(conns)
        if n == 1:
            c = conns[0]
            return c if c.usable and c.id not in tried else None
        self._turn += 1
        best = None
        for i in range(n):
            c = conns[(self._turn + i) % n]
            if c.usable and c.id not in tried and (best is None or c.inflight < best.inflight):
                best = c
        return best

    def stats(self) -> dict[str, Any]:
        queued = sum(c.events_queued for c in self.conns)
        return {
            "key_id": self.key_id,
            "peer": self.name,
            "connections": [c.id for c in self.conns],
            **self.delivery.as_dict(),
            "events_queued": queued,
        }


class LeasePeers:
    """The identities of one lease (live ones, and up to MAX_IDENTITIES that left), its event
    sequence, deliveries that found no peer, and its cached upstream."""

    __slots__ = ("connections", "identities", "name", "no_peer", "seq", "upstream")

    def __init__(self, name: str) -> None:
        self.name = name
        self.identities: OrderedDict[str, PeerIdentity] = OrderedDict()
        self.connections: list[PeerConnection] = []
        self.no_peer = Delivery()
        self.seq = 0
        self.upstream: RelayLeaseUpstream | None = None

    @property
    def active(self) -> bool:
        return bool(self.connections)

    def targets(self) -> list[Target]:
        return [i.target for i in self.identities.values() if i.usable]

    def join(self, conn: PeerConnection) -> PeerIdentity:
        key = f"{conn.key_id}/{conn.peer}"
        identity = self.identities.pop(key, None) or PeerIdentity(self.name, conn.key_id, conn.peer)
        self.identities[key] = identity  # most recent last
        identity.conns.append(conn)
        identity.refresh()
        self.connections.append(conn)
        self._trim()
        return identity

    def leave(self, conn: PeerConnection) -> None:
        if conn in self.connections:
            self.connections.remove(conn)
        identity = self.identities.get(f"{conn.key_id}/{conn.peer}")
        if identity is not None and conn in identity.conns:
            identity.conns.remove(conn)
            identity.refresh()
        self._trim()

    def _trim(self) -> None:
        gone = [k for k, i in self.identities.items() if not i.conns]
        for key in gone[: max(0, len(gone) - MAX_IDENTITIES)]:
            del self.identities[key]

    def stats(self) -> dict[str, Any]:
        return {
            "connections": [c.stats() for c in self.connections],
            "peers": {k: i.stats() for k, i in self.identities.items()},
            "events_failed_no_peer": self.no_peer.events_failed,
            "last_failure_at": self.no_peer.last_failure_at,
            "last_failure_reason": self.no_peer.last_failure_reason,
        }
