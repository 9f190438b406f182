"""LiveStats: per-route rates and percentiles from samples of the real metrics registry."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from gatewayd.observability.live import LiveStats, quantile
from gatewayd.observability.metrics import Metrics


def test_quantile_interpolates_like_prometheus() -> None:
    # 10 observations <= 1, 10 more <= 2: the median is the top of the first bucket, the
    # 75th percentile half-way through the second.
    buckets = [(1.0, 10.0), (2.0, 20.0), (math.inf, 20.0)]
    assert quantile(0.5, buckets) == pytest.approx(1.0)
    assert quantile(0.75, buckets) == pytest.approx(1.5)
    assert quantile(0.25, buckets) == pytest.approx(0.5)  # the first bucket starts at 0
    # a rank in +Inf answers the highest finite bound; no observation answers None
    assert quantile(0.99, [(1.0, 1.0), (math.inf, 100.0)]) == 1.0
    assert quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]) is None


def test_windows_take_deltas_of_the_real_counters() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    live = LiveStats(registry, interval=1.0)
    api = metrics.route("api")
    live.sample(at=0.0)
    for _ in range(100):  # before the 1-minute window: only the 5-minute one sees these
        api.count(200)
        api.duration.observe(0.2)  # bucket (0.1, 0.25]
    live.sample(at=200.0)
    for status in [200] * 50 + [404] * 30 + [503] * 20:
        api.count(status)
        api.duration.observe(0.003)  # bucket (0.0025, 0.005]
    live.sample(at=260.0)

    (one,) = live.window(60)
    assert one.route == "api"
    assert one.span == 60
    assert one.requests == 100
    assert one.rps == pytest.approx(100 / 60)
    assert one.rate_4xx == pytest.approx(30 / 60)
    assert one.rate_5xx == pytest.approx(20 / 60)
    assert one.p50 is not None and 0.0025 < one.p50 <= 0.005
    assert one.p99 is not None and one.p99 <= 0.005  # the slow ones are older than a minute

    (five,) = live.window(300)
    assert five.span == 260  # the process is younger than the window
    assert five.requests == 200
    assert five.rate_5xx == pytest.approx(20 / 260)
    assert five.p99 is not None and 0.1 < five.p99 <= 0.25
    assert five.p50 is not None and five.p50 <= 0.005


def test_no_figures_before_two_samples_and_the_ring_is_bounded() -> None:
    registry = CollectorRegistry()
    Metrics(registry).route("api").count(200)
    live = LiveStats(registry, interval=1.0, keep=10)
    assert live.window(60) == []
    for t in range(50):
        live.sample(at=float(t))
    assert len(live.samples) == 12
    (rates,) = live.window(60)
    assert rates.span == 11 and rates.requests == 0 and rates.p50 is None


async def test_the_sampler_task_samples_until_closed() -> None:
    import asyncio

    registry = CollectorRegistry()
    Metrics(registry).route("api").count(200)
    live = LiveStats(registry, interval=0.01)
    live.start()
    await asyncio.sleep(0.1)
    await live.close()
    taken = len(live.samples)
    assert taken >= 3
    await asyncio.sleep(0.05)
    assert len(live.samples) == taken
