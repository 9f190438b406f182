"""The real client IP of a request: the socket peer or, behind trusted proxies, X-Forwarded-For.

A listener trusts the proxies in front of it by address (``trusted_proxies: [CIDR, ...]``), by
count (``trusted_hops: N``, Envoy's ``xff_num_trusted_hops``), or both. The chain of addresses
is X-Forwarded-For as received, then the socket peer; it is walked from the right (the peer is
position 0). An address is a trusted proxy when it is in ``trusted_proxies`` (if set) and among
the ``trusted_hops`` rightmost positions (if set); the first one that is not is the client.

- The peer itself not trusted (or no trust configured): the peer is the client and
  X-Forwarded-For is ignored.
- Every address trusted, or the walk reaching ``MAX_HOPS`` entries: the last (leftmost) address
  reached is the client.
- A malformed entry (not an IP address, optionally with a port) ends the walk: the client is the
  address just right of it, the last one the walk could believe. Empty entries are skipped.

The X-Forwarded-For the upstream receives is rewritten to match: the client, the trusted proxies
it came through, then the peer; whatever stood left of the client (anyone can write it) and every
incoming X-Forwarded-For on a listener that trusts nobody are dropped. Addresses taken from the
header are normalised (``str(ipaddress.ip_address(...))``, IPv4-mapped IPv6 as IPv4), so the
value is always a plain address, safe in a log line.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDict

if TYPE_CHECKING:
    from gatewayd.config.schema import ListenerConfig

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network
XFF = "X-Forwarded-For"
MAX_HOPS = 32  # X-Forwarded-For entries looked at, from the right: bounded work on any header


def parse_address(value: str) -> Address | None:
    """An address from an X-Forwarded-For entry (``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1``,
    ``[2001:db8::1]:443``); None for anything else (names, ``unknown``, zone ids)."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (end + 1 < len(value) and value[end + 1] != ":"):
            return None
        value = value[1:end]
    elif value.count(":") == 1:  # v4:port
        value = value.partition(":")[0]
    if "%" in value:  # a zone id means nothing beyond the host that wrote it
        return None
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@functools.lru_cache(maxsize=8192)
def _parsed(value: str) -> tuple[str, int, int] | None:
    """(normalised text, IP version, integer value) of an entry, or None; cached because the
    same proxies and clients come back request after request (ipaddress is slow)."""
    addr = parse_address(value)
    return None if addr is None else (str(addr), addr.version, int(addr))


@dataclass(frozen=True, slots=True)
class ListenerTrust:
    """Which proxies in front of one listener are believed (compiled from its config)."""

    networks: tuple[Network, ...] = ()
    hops: int = 0  # 0: not limited by count
    _masks: tuple[tuple[int, int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        masks = tuple((n.version, int(n.network_address), int(n.netmask)) for n in self.networks)
        object.__setattr__(self, "_masks", masks)

    @classmethod
    def of(cls, config: ListenerConfig) -> ListenerTrust | None:
        """The listener's trust, or None when it trusts nobody (X-Forwarded-For is ignored)."""
        if not config.trusted_proxies and not config.trusted_hops:
            return None
        nets = tuple(ipaddress.ip_network(c, strict=False) for c in config.trusted_proxies)
        return cls(nets, config.trusted_hops)

    def trusts(self, version: int, value: int, position: int) -> bool:
        """Is the address (``version``, integer ``value``) at ``position`` from the right of the
        chain (the peer is 0) a trusted proxy?"""
        if self.hops and position >= self.hops:
            return False
        if self._masks:
            return any(v == version and value & m == net for v, net, m in self._masks)
        return True

    def resolve(self, peer: str, headers: CIMultiDict[str]) -> str:
        """The client's address; rewrites ``headers``' X-Forwarded-For to the believed chain."""
        values = headers.getall(XFF, ())
        headers.popall(XFF, None)
        me = _parsed(peer)
        if me is None or not self.trusts(me[1], me[2], 0):
            return peer
        client = me[0]
        believed: list[str] = []  # right to left, the peer excluded
        position = 1
        for entry in _from_right(values):
            if not entry or entry.isspace():
                continue
            hop = _parsed(entry)
            if hop is None:  # garbage: believe nothing further left
                break
            client = hop[0]
            believed.append(client)
            if not self.trusts(hop[1], hop[2], position):
                break  # the first address that is not a trusted proxy: the client
            position += 1
        if believed:
            believed.reverse()
            believed.append(me[0])
            headers[XFF] = ", ".join(believed)
        return client


def _from_right(values: Sequence[str]) -> Iterator[str]:
    """X-Forwarded-For entries (over every copy of the header) from the right, at most
    ``MAX_HOPS`` of them: what lies further left is never split, let alone parsed."""
    budget = MAX_HOPS
    for value in reversed(values):
        parts = value.rsplit(",", budget)
        if len(parts) > budget:
            del parts[0]  # the unsplit rest, beyond the bound
        yield from reversed(parts)
        budget -= len(parts)
        if budget <= 0:
            return


def client_ip(transport: Any, headers: CIMultiDict[str], listener: ListenerTrust | None) -> str:
    """The real client IP of a request that came in on ``transport`` (its socket peer) with
    ``headers`` (the mutable copy that will be forwarded) through a listener whose trust is
    ``listener``. X-Forwarded-For in ``headers`` is left holding only what was believed (see the
    module's docstring); the forwarder then adds the client when it is absent."""
    peer = transport.get_extra_info("peername") if transport is not None else None
    ip: str = peer[0] if peer else ""
    if listener is not None:
        return listener.resolve(ip, headers)
    if XFF in headers:  # nobody is trusted here: anyone could have written it
        headers.popall(XFF)
    return ip
