"""Requests and limit hits per tenant, with a bounded label space.

Tenant names come from credentials (key records, JWT claims), so they are not bounded by the
config. Each tenant's counts are kept exactly (up to ``TRACKED`` tenants; later ones are counted
only in the total), and at scrape time the ``top`` tenants with the most requests get a series
of their own (on a tie an exported tenant keeps its place, then names decide); everyone else is
summed as ``tenant="other"``.

The exported series stay counters. While fewer than ``top`` tenants are exported, a new tenant
gets its series at its first request, with exact counts. Later, a tenant that overtakes one of
the exported gets its series from the scrape at which it entered the top (its earlier requests
stay in ``other``), and the one it displaced hands its whole count to ``other``. So ``other``
only grows, a named series only grows while it is exported, and the series always add up to
the total.

The request path pays two dictionary updates (:meth:`TenantCounts.count`): the ranking is done
when /metrics is scraped.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily

OTHER = "other"
DEFAULT_TOP = 20
TRACKED = 10_000  # tenants counted one by one; beyond them, only in the total


class TenantCounts:
    __slots__ = ("_base", "limited", "overflow", "requests", "top")

    def __init__(self, top: int = DEFAULT_TOP) -> None:
        self.top = top
        self.requests: dict[str, int] = {}
        self.limited: dict[str, int] = {}
        # (requests, limit hits) beyond TRACKED tenants
        self.overflow = [0, 0]
        # the exported tenants: their counts when they entered the top
        self._base: dict[str, tuple[int, int]] = {}

    def count(self, tenant: str, limited: bool) -> None:
        """One answered request of ``tenant``; ``limited``: it was refused by a limit (429)."""
        requests = self.requests
        n = requests.get(tenant)
        if n is None:
            if len(requests) >= TRACKED or tenant == OTHER:
                self.overflow[0] += 1
                self.overflow[1] += limited
                return
            n = 0
            if len(self._base) < self.top:  # a free place: counted exactly from the start
                self._base[tenant] = (0, 0)
        requests[tenant] = n + 1
        if limited:
            self.limited[tenant] = self.limited.get(tenant, 0) + 1

    def rank(self) -> dict[str, tuple[int, int]]:
        """The exported tenants now, with their counts when they entered the top."""
        requests, limited, named = self.requests, self.limited, self._base
        # the most requests first; on a tie the exported tenant stays, then names decide
        ranked = heapq.nsmallest(
            self.top, requests.items(), key=lambda kv: (-kv[1], kv[0] not in named, kv[0])
        )
        top = {name for name, _ in ranked}
        base = {name: b for name, b in named.items() if name in top}
        for name in top - base.keys():
            base[name] = (requests[name], limited.get(name, 0))
        self._base = base
        return base

    def collect(self) -> Iterator[CounterMetricFamily]:
        base = self.rank()
        requests = CounterMetricFamily(
            "gatewayd_tenant_requests",
            f"Requests answered, by tenant (the {self.top} busiest tenants; the rest as '{OTHER}')",
            labels=["tenant"],
        )
        limited = CounterMetricFamily(
            "gatewayd_tenant_limited",
            "Requests refused by a limit (429), by tenant (the same tenants as"
            " gatewayd_tenant_requests_total)",
            labels=["tenant"],
        )
        other_requests = self.overflow[0] + sum(self.requests.values())
        other_limited = self.overflow[1] + sum(self.limited.values())
        for name in sorted(base):
            r = self.requests[name] - base[name][0]
            n = self.limited.get(name, 0) - base[name][1]
            requests.add_metric([name], r)
            limited.add_metric([name], n)
            other_requests -= r
            other_limited -= n
        requests.add_metric([OTHER], other_requests)
        limited.add_metric([OTHER], other_limited)
        yield requests
        yield limited
