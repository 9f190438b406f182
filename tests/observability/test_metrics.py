"""Metrics.counter/gauge: one collector per name for the process, checked by type, labels and
description (as gatewayd.chain.services.MetricsFactory says)."""

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
