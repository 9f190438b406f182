"""The upstreams of ``relay:`` routes: one per relay lease, made when a request names a lease
that peers hold (``relay: by_path`` takes it from the path, ``relay: <lease>`` names it).

The relay is a layer beside this one, so the generation hands in the factory that makes a
lease's upstream; it answers ``None`` when no peer holds the lease. At most ``MAX_LEASES`` are
kept (least recently used first out), so a flood of lease names in paths costs no memory: a
name no peer holds is answered 503 without keeping anything.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable

from gatewayd.chain.upstream import UpstreamError, UpstreamUnavailable
from gatewayd.proxy.upstream import ManagedUpstream
from gatewayd.routing.table import Route

LEASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_LEASES = 1000


def lease_of(route: Route, path: str) -> str:
    """The lease of a ``relay: by_path`` request: ``<prefix>/<lease>/<rest>``."""
    return path[len(route.prefix) :].lstrip("/").partition("/")[0]


class LeaseUpstreams:
    def __init__(self, make: Callable[[str], ManagedUpstream | None]) -> None:
        self.make = make
        self.upstreams: OrderedDict[str, ManagedUpstream] = OrderedDict()
        self.retired: list[ManagedUpstream] = []

    def get(self, lease: str) -> ManagedUpstream:
        upstream = self.upstreams.get(lease)
        if upstream is not None:
            self.upstreams.move_to_end(lease)
            return upstream
        if not LEASE_RE.match(lease):
            raise UpstreamError(404, "no_lease", "expected /<lease>/<path> after the route prefix")
        upstream = self.make(lease)
        if upstream is None:
            raise UpstreamUnavailable(f"no peer holds relay lease '{lease}'")
        self.upstreams[lease] = upstream
        while len(self.upstreams) > MAX_LEASES:
            self.retired.append(self.upstreams.popitem(last=False)[1])
        return upstream

    def all(self) -> list[ManagedUpstream]:
        return list(self.upstreams.values())

    async def close(self) -> None:
        for upstream in [*self.upstreams.values(), *self.retired]:
            await upstream.close()
        self.upstreams.clear()
        self.retired.clear()
