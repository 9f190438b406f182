"""Prometheus metrics. Labels are route and upstream names (never raw paths), status codes and
results: all bounded by the config, so a flood of odd requests cannot grow the label space."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
NO_ROUTE = "_none"


@dataclass(slots=True)
class RouteMetrics:
    """Pre-bound children for one route, so the hot path does no label lookups but the status."""

    duration: Any
    inflight: Any
    requests: Any
    route: str
    by_status: dict[int, Any]

    def count(self, status: int) -> None:
        child = self.by_status.get(status)
        if child is None:
            child = self.requests.labels(self.route, str(status))
            if len(self.by_status) < 64:
                self.by_status[status] = child
        child.inc()


class Metrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.requests = Counter(
            "gatewayd_requests_total",
            "Requests answered, by route and status",
            ["route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "gatewayd_request_duration_seconds",
            "Time from request to the end of the response, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inflight = Gauge(
            "gatewayd_requests_in_flight",
            "Requests being served, by route",
            ["route"],
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "gatewayd_upstream_duration_seconds",
            "Time to upstream response headers, by upstream",
            ["upstream"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "gatewayd_upstream_errors_total",
            "Upstream failures, by upstream and kind (connect, timeout, disconnect)",
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
        for result in ("success", "failure"):
            self.reloads.labels(result)
        self._routes: dict[str, RouteMetrics] = {}
        self._extras: dict[str, Any] = {}
        self._upstreams: dict[str, Any] = {}

    def counter(self, name: str, doc: str, labels: Sequence[str]) -> Counter:
        """The process's counter called ``name``, made on first use (for plugins: a reload
        builds new plugin instances, and they must find the same collector again)."""
        return self._extra(Counter, name, doc, labels)

    def gauge(self, name: str, doc: str, labels: Sequence[str]) -> Gauge:
        return self._extra(Gauge, name, doc, labels)

    def _extra(self, kind: type[Any], name: str, doc: str, labels: Sequence[str]) -> Any:
        found = self._extras.get(name)
        if found is None:
            found = kind(name, doc, list(labels), registry=self.registry)
            self._extras[name] = found
        elif not isinstance(found, kind) or list(found._labelnames) != list(labels):
            raise ValueError(f"metric {name} already exists with another type or labels")
        return found

    def route(self, name: str) -> RouteMetrics:
        rm = self._routes.get(name)
        if rm is None:
            rm = RouteMetrics(
                self.duration.labels(name), self.inflight.labels(name), self.requests, name, {}
            )
            self._routes[name] = rm
        return rm

    def upstream(self, name: str) -> Any:
        child = self._upstreams.get(name)
        if child is None:
            child = self._upstreams[name] = self.upstream_duration.labels(name)
        return child

    def close(self) -> None:
        collectors = [getattr(self, name) for name in list(vars(self))]
        for obj in [*collectors, *self._extras.values()]:
            if isinstance(obj, Counter | Gauge | Histogram):
                self.registry.unregister(obj)
