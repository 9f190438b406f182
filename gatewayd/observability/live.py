"""Live figures for the dashboard: per-route requests/s, 4xx and 5xx rates and latency
percentiles over the last minute and the last five, computed in the process.

:class:`LiveStats` reads the daemon's own Prometheus registry once a second (the
``gatewayd_requests`` counter and the ``gatewayd_request_duration_seconds`` histogram, as
``/metrics`` exposes them) into a ring of samples, and answers a window's figures from the
difference between the newest sample and the one a window earlier: rates from counter deltas,
percentiles from bucket deltas with Prometheus's own ``histogram_quantile`` interpolation. The
request path does no work for it: the sampler is a task of its own, reading what is counted anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

log = logging.getLogger("gatewayd.observability")
REQUESTS = "gatewayd_requests"
DURATION = "gatewayd_request_duration_seconds"
WINDOWS = (60.0, 300.0)
QUANTILES = (0.5, 0.95, 0.99)


@dataclass(slots=True)
class RouteSample:
    """One route's cumulative counts at one moment."""

    total: float = 0.0
    client_errors: float = 0.0  # 4xx
    server_errors: float = 0.0  # 5xx
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # time.monotonic()
    routes: dict[str, RouteSample]


@dataclass(frozen=True, slots=True)
class RouteRates:
    """A route's figures over a window (``span``: the seconds the samples really cover, less
    than the window while the process is younger than it). Latencies in seconds, ``None``
    when no request finished in the window."""

    route: str
    span: float
    requests: float  # requests finished in the window
    rps: float
    rate_4xx: float  # per second
    rate_5xx: float
    p50: float | None
    p95: float | None
    p99: float | None


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus's ``histogram_quantile``: ``buckets`` are (upper bound, cumulative count)
    sorted by bound, the last one ``+Inf``. Linear interpolation inside the bucket that holds
    the rank; a rank in the ``+Inf`` bucket answers the highest finite bound."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def read(registry: CollectorRegistry, at: float) -> Sample:
    """One sample of the request counter and duration histogram of ``registry``."""
    routes: dict[str, RouteSample] = {}
    for family in registry.collect():
        if family.name == REQUESTS:
            for s in family.samples:
                if not s.name.endswith("_total"):
                    continue
                rs = routes.setdefault(s.labels.get("route", ""), RouteSample())
                rs.total += s.value
                status = s.labels.get("status", "")
                if status.startswith("4"):
                    rs.client_errors += s.value
                elif status.startswith("5"):
                    rs.server_errors += s.value
        elif family.name == DURATION:
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    rs = routes.setdefault(s.labels.get("route", ""), RouteSample())
                    rs.buckets[float(s.labels["le"])] = s.value
    return Sample(at, routes)


class LiveStats:
    """The ring of samples and the windows' figures; :meth:`start` runs the sampler."""

    def __init__(
        self, registry: CollectorRegistry, interval: float = 1.0, keep: float = max(WINDOWS)
    ) -> None:
        self.registry = registry
        self.interval = interval
        self.samples: deque[Sample] = deque(maxlen=int(keep / interval) + 2)
        self._task: asyncio.Task[None] | None = None

    def sample(self, at: float | None = None) -> Sample:
        """Take one sample now (the sampler calls this every ``interval``)."""
        taken = read(self.registry, time.monotonic() if at is None else at)
        self.samples.append(taken)
        return taken

    def window(self, seconds: float) -> list[RouteRates]:
        """Every route's figures over the last ``seconds`` (empty before two samples)."""
        if len(self.samples) < 2:
            return []
        newest = self.samples[-1]
        start = self.samples[0]
        for s in self.samples:  # the oldest sample still inside the window
            if newest.at - s.at <= seconds + self.interval / 2:
                start = s
                break
        span = newest.at - start.at
        if span <= 0:
            return []
        return [
            _rates(name, now, start.routes.get(name, RouteSample()), span)
            for name, now in sorted(newest.routes.items())
        ]

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:
                log.exception("live stats: a sample of the metrics failed")
            await asyncio.sleep(self.interval)


def _rates(name: str, now: RouteSample, then: RouteSample, span: float) -> RouteRates:
    done = max(now.total - then.total, 0.0)
    deltas = [
        (bound, max(count - then.buckets.get(bound, 0.0), 0.0))
        for bound, count in sorted(now.buckets.items())
    ]
    p50, p95, p99 = (quantile(q, deltas) for q in QUANTILES)
    return RouteRates(
        route=name,
        span=span,
        requests=done,
        rps=done / span,
        rate_4xx=max(now.client_errors - then.client_errors, 0.0) / span,
        rate_5xx=max(now.server_errors - then.server_errors, 0.0) / span,
        p50=p50,
        p95=p95,
        p99=p99,
    )
