"""Metrics.counter/gauge/histogram: one collector per name for the process, checked by type,
labels, description and buckets (as gatewayd.chain.services.MetricsFactory says)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gatewayd.observability.metrics import Metrics


def test_the_same_name_finds_the_same_collector() -> None:
    metrics = Metrics(CollectorRegistry())
    counter = metrics.counter("plugin_hits_total", "Hits", ["route"])
    counter.labels("api").inc()
    assert metrics.counter("plugin_hits_total", "Hits", ["route"]) is counter
    gauge = metrics.gauge("plugin_level", "Level", ["route", "target"])
    assert metrics.gauge("plugin_level", "Level", ("route", "target")) is gauge


def test_other_labels_or_another_type_are_refused() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.counter("plugin_hits_total", "Hits", ["route"])
    with pytest.raises(ValueError, match="another type or labels"):
        metrics.counter("plugin_hits_total", "Hits", ["route", "result"])
    with pytest.raises(ValueError, match="another type or labels"):
        metrics.gauge("plugin_hits_total", "Hits", ["route"])
    with pytest.raises(ValueError, match="another description"):
        metrics.counter("plugin_hits_total", "Hits per route", ["route"])


def test_close_unregisters_the_plugins_collectors() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.counter("plugin_hits_total", "Hits", ["route"]).labels("api").inc()
    assert b"plugin_hits_total" in generate_latest(registry)
    metrics.close()
    assert b"plugin_hits" not in generate_latest(registry)


def test_histograms_for_plugins_are_found_again_and_keep_their_buckets() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    h = metrics.histogram("plugin_tokens", "Tokens", ["model"], [1, 10, 100])
    assert metrics.histogram("plugin_tokens", "Tokens", ["model"], (1.0, 10.0, 100.0)) is h
    h.labels("m").observe(5)
    h.labels("m").observe(500)
    assert registry.get_sample_value("plugin_tokens_bucket", {"model": "m", "le": "1.0"}) == 0
    assert registry.get_sample_value("plugin_tokens_bucket", {"model": "m", "le": "10.0"}) == 1
    assert registry.get_sample_value("plugin_tokens_bucket", {"model": "m", "le": "+Inf"}) == 2
    assert registry.get_sample_value("plugin_tokens_sum", {"model": "m"}) == 505
    with pytest.raises(ValueError, match="buckets"):
        metrics.histogram("plugin_tokens", "Tokens", ["model"], [1, 10])
    with pytest.raises(ValueError):
        metrics.histogram("plugin_tokens", "Tokens", ["other"], [1, 10, 100])
    with pytest.raises(ValueError):
        metrics.counter("plugin_tokens", "Tokens", ["model"])
    metrics.counter("plugin_count", "Count", ["model"])
    with pytest.raises(ValueError):
        metrics.histogram("plugin_count", "Count", ["model"], [1])
    metrics.close()
    assert registry.get_sample_value("plugin_tokens_sum", {"model": "m"}) is None
