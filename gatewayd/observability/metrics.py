"""Prometheus metrics. Labels are route and upstream names (never raw paths), status codes and
results: all bounded by the config, so a flood of odd requests cannot grow the label space.
Tenants, which come from credentials, are bounded by count instead (gatewayd.observability.
tenants: the busiest ``metrics.top_tenants``, the rest as ``other``)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from gatewayd.observability.tenants import TenantCounts

M = TypeVar("M", Counter, Gauge, Histogram)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Body sizes in bytes: 0 (no body), then powers of 4 from 256 B to 256 MiB.
SIZE_BUCKETS = (0, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 268435456)
NO_ROUTE = "_none"


class Histo:
    """A histogram kept as plain integers: the event loop is the only writer, so it needs none
    of prometheus_client's locks. Exposed at scrape time by :class:`HotPathCollector`."""

    __slots__ = ("bounds", "buckets", "count", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.buckets[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.buckets, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out


class InFlight:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1


class RouteMetrics:
    """One route's request count by status, duration and body size histograms, in-flight
    gauge and open SSE streams (replies of type ``text/event-stream`` being written)."""

    __slots__ = ("by_status", "duration", "inflight", "request_size", "response_size", "sse")

    def __init__(self) -> None:
        self.by_status: dict[int, int] = {}
        self.duration = Histo()
        self.inflight = InFlight()
        self.sse = InFlight()
        self.request_size = Histo(SIZE_BUCKETS)
        self.response_size = Histo(SIZE_BUCKETS)

    def count(self, status: int) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1


class HotPathCollector:
    """Turns the per-request counters into Prometheus families when /metrics is scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        routes = self.metrics._routes
        requests = CounterMetricFamily(
            "gatewayd_requests",
            "Requests answered, by route and status",
            labels=["route", "status"],
        )
        duration = HistogramMetricFamily(
            "gatewayd_request_duration_seconds",
            "Time from request to the end of the response, by route",
            labels=["route"],
        )
        inflight = GaugeMetricFamily(
            "gatewayd_requests_in_flight", "Requests being served, by route", labels=["route"]
        )
        sse = GaugeMetricFamily(
            "gatewayd_sse_streams_open",
            "Proxied server-sent event streams (text/event-stream replies) open, by route",
            labels=["route"],
        )
        request_size = HistogramMetricFamily(
            "gatewayd_request_size_bytes",
            "Request body bytes read from the client, by route",
            labels=["route"],
        )
        response_size = HistogramMetricFamily(
            "gatewayd_response_size_bytes",
            "Response body bytes sent to the client, by route",
            labels=["route"],
        )
        for name, rm in routes.items():
            for status, n in sorted(rm.by_status.items()):
                requests.add_metric([name, str(status)], n)
            duration.add_metric([name], rm.duration.cumulative(), rm.duration.sum)
            inflight.add_metric([name], rm.inflight.value)
            sse.add_metric([name], rm.sse.value)
            request_size.add_metric([name], rm.request_size.cumulative(), rm.request_size.sum)
            response_size.add_metric([name], rm.response_size.cumulative(), rm.response_size.sum)
        upstream = HistogramMetricFamily(
            "gatewayd_upstream_duration_seconds",
            "Time to upstream response headers, by upstream",
            labels=["upstream"],
        )
        for name, h in self.metrics._upstreams.items():
            upstream.add_metric([name], h.cumulative(), h.sum)
        yield from (requests, duration, inflight, sse, request_size, response_size, upstream)
        yield from self.metrics.tenants.collect()
        for family in self.metrics._outcomes.values():
            yield family.collect()


@dataclass
class Outcomes:
    """One ``results`` counter family: per route, a count per result."""

    name: str  # e.g. gatewayd_ratelimit_total
    doc: str
    routes: dict[str, dict[str, int]] = field(default_factory=dict)

    def collect(self) -> CounterMetricFamily:
        family = CounterMetricFamily(
            self.name.removesuffix("_total"), self.doc, labels=["route", "result"]
        )
        for route, counts in self.routes.items():
            for result, n in counts.items():
                family.add_metric([route, result], n)
        return family


class Metrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.upstream_errors = Counter(
            "gatewayd_upstream_errors_total",
            "Upstream failures by upstream and kind (connect, timeout, disconnect, reset, framing)",
            ["upstream", "kind"],
            registry=registry,
        )
        self.reloads = Counter(
            "gatewayd_reloads_total",
            "Configuration reloads, by result (success, failure)",
            ["result"],
            registry=registry,
        )
        self.generation = Gauge(
            "gatewayd_config_generation",
            "Number of the serving config generation",
            registry=registry,
        )
        self.generations_draining = Gauge(
            "gatewayd_generations_draining",
            "Old config generations still serving in-flight requests",
            registry=registry,
        )
        self.protocol_errors = Counter(
            "gatewayd_protocol_errors_total",
            "Requests refused before routing because they broke HTTP/1 (malformed, too long,"
            " unsupported version or transfer coding), by reason (a fixed set)",
            ["reason"],
            registry=registry,
        )
        for result in ("success", "failure"):
            self.reloads.labels(result)
        self._routes: dict[str, RouteMetrics] = {}
        self._upstreams: dict[str, Histo] = {}
        # plugins' collectors by name, with the description and labels they were made with
        self._extras: dict[str, tuple[Counter | Gauge | Histogram, str, tuple[str, ...]]] = {}
        self._bounds: dict[str, tuple[float, ...]] = {}  # the buckets of plugins' histograms
        self._outcomes: dict[str, Outcomes] = {}
        # requests and limit hits per tenant (``metrics.tenants`` in the config sets its top)
        self.tenants = TenantCounts()
        self._collectors: list[Collector] = []  # other parts' scrape-time collectors
        self._hot = HotPathCollector(self)
        registry.register(self._hot)

    def add_collector(self, collector: Collector) -> None:
        """Register a scrape-time collector of another part of the process (the relay's, the
        listeners' certificates); :meth:`close` unregisters it with the rest."""
        self.registry.register(collector)
        self._collectors.append(collector)

    def counter(self, name: str, doc: str, labels: Sequence[str]) -> Counter:
        """The process's counter called ``name``, made on first use (for plugins: a reload
        builds new plugin instances, and they must find the same collector again)."""
        return self._extra(Counter, name, doc, labels)

    def results(self, name: str, doc: str, route: str, results: Sequence[str]) -> dict[str, int]:
        """The counts of a counter labelled by route and a fixed set of results, for plugins
        that count outcomes per request (``counts[result] += 1``): plain integers bumped without
        a lock or a call, turned into the ``name`` family when /metrics is scraped. The same
        dict is handed out again after a reload, so counts carry on."""
        family = self._outcomes.get(name)
        if family is None:
            family = self._outcomes[name] = Outcomes(name, doc)
        elif family.doc != doc:
            raise ValueError(f"metric {name} already exists with another description")
        counts = family.routes.get(route)
        if counts is None:
            counts = family.routes[route] = {}
        for result in results:
            counts.setdefault(result, 0)
        return counts

    def gauge(self, name: str, doc: str, labels: Sequence[str]) -> Gauge:
        return self._extra(Gauge, name, doc, labels)

    def histogram(
        self, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> Histogram:
        """The process's histogram called ``name`` with these bucket bounds (``+Inf`` is
        added), made on first use; the same name with other buckets is a ``ValueError``."""
        bounds = tuple(float(b) for b in buckets)
        if self._bounds.get(name, bounds) != bounds:
            raise ValueError(f"metric {name} already exists with other buckets")
        made = self._extra(Histogram, name, doc, labels, buckets=bounds)
        self._bounds[name] = bounds
        return made

    def _extra(
        self, kind: type[M], name: str, doc: str, labels: Sequence[str], **options: Any
    ) -> M:
        entry = self._extras.get(name)
        if entry is None:
            made = kind(name, doc, list(labels), registry=self.registry, **options)
            self._extras[name] = (made, doc, tuple(labels))
            return made
        found, known_doc, known_labels = entry
        if not isinstance(found, kind) or known_labels != tuple(labels):
            raise ValueError(f"metric {name} already exists with another type or labels")
        if known_doc != doc:
            raise ValueError(f"metric {name} already exists with another description")
        return found

    def route(self, name: str) -> RouteMetrics:
        rm = self._routes.get(name)
        if rm is None:
            rm = self._routes[name] = RouteMetrics()
        return rm

    def upstream(self, name: str) -> Histo:
        h = self._upstreams.get(name)
        if h is None:
            h = self._upstreams[name] = Histo()
        return h

    def close(self) -> None:
        for collector in self._collectors:
            self.registry.unregister(collector)
        self._collectors.clear()
        collectors = [getattr(self, name) for name in list(vars(self))]
        for obj in [*collectors, *(made for made, _, _ in self._extras.values())]:
            if isinstance(obj, Counter | Gauge | Histogram | HotPathCollector):
                self.registry.unregister(obj)


def outcome_counts(
    services: Any, name: str, doc: str, route: str, results: Sequence[str]
) -> dict[str, int]:
    """A plugin's per-route outcome counts (:meth:`Metrics.results`), or unexported counts
    when it runs without the daemon's metrics (the plugin test harness)."""
    metrics = getattr(services, "metrics", None)
    if metrics is None:
        return dict.fromkeys(results, 0)
    counts: dict[str, int] = metrics.results(name, doc, route, results)
    return counts
