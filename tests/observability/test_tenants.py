"""TenantCounts (gatewayd/observability/tenants.py): the busiest tenants by name, the rest as
``other``; every exported series a counter that only grows, and the series add up."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gatewayd.observability.metrics import Metrics
from gatewayd.observability.tenants import TRACKED, TenantCounts


def exported(counts: TenantCounts) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for family in counts.collect():
        out[family.name] = {s.labels["tenant"]: s.value for s in family.samples}
    return out


def requests(counts: TenantCounts) -> dict[str, float]:
    return exported(counts)["gatewayd_tenant_requests"]


def test_the_top_tenants_by_requests_get_a_series_and_the_rest_are_other() -> None:
    counts = TenantCounts(top=2)
    for tenant, n in (("acme", 5), ("globex", 3), ("initech", 1), ("umbrella", 1)):
        for _ in range(n):
            counts.count(tenant, False)
    assert requests(counts) == {"acme": 5, "globex": 3, "other": 2}


def test_on_a_tie_the_exported_tenant_stays_and_names_decide_among_the_others() -> None:
    counts = TenantCounts(top=2)
    for tenant in ("zeta", "beta", "alpha"):
        counts.count(tenant, False)
    assert requests(counts) == {"beta": 1, "zeta": 1, "other": 1}
    counts = TenantCounts(top=1)
    counts.count("acme", False)
    for _ in range(2):
        for tenant in ("zeta", "beta"):
            counts.count(tenant, False)
    assert requests(counts) == {"beta": 0, "other": 5}


def test_limit_hits_follow_the_same_tenants() -> None:
    counts = TenantCounts(top=1)
    counts.count("acme", True)
    counts.count("acme", False)
    counts.count("globex", True)
    assert exported(counts)["gatewayd_tenant_limited"] == {"acme": 1, "other": 1}


def test_a_change_of_the_top_keeps_every_series_growing_and_the_sum_exact() -> None:
    counts = TenantCounts(top=1)
    seen: dict[str, float] = {}
    total = 0
    plan = [("acme", 3), ("globex", 5), ("acme", 4), ("initech", 20), ("globex", 1)]
    for tenant, n in plan:
        for _ in range(n):
            counts.count(tenant, False)
            total += 1
        now = requests(counts)
        assert sum(now.values()) == total
        assert len(now) == 2  # one tenant and other
        for name, value in now.items():
            if name in seen and name == "other":
                assert value >= seen[name], (name, seen[name], value)
            seen[name] = value
    assert set(requests(counts)) == {"initech", "other"}
    # initech entered the top at the scrape after its 20 requests: they stay in other
    assert requests(counts)["initech"] == 0


def test_a_tenant_that_overtakes_counts_from_the_scrape_it_entered_the_top() -> None:
    counts = TenantCounts(top=1)
    counts.count("acme", False)
    for _ in range(3):
        counts.count("globex", False)
    assert requests(counts) == {"globex": 0, "other": 4}  # acme's 1 went to other
    counts.count("globex", False)
    counts.count("acme", False)
    assert requests(counts) == {"globex": 1, "other": 5}


def test_tenants_beyond_the_tracked_ones_are_counted_as_other() -> None:
    counts = TenantCounts(top=3)
    for i in range(TRACKED + 50):
        counts.count(f"t{i}", i % 2 == 0)
    assert len(counts.requests) == TRACKED
    counts.count("other", False)  # a tenant called "other" cannot hide among the named
    now = exported(counts)
    assert sum(now["gatewayd_tenant_requests"].values()) == TRACKED + 51
    assert sum(now["gatewayd_tenant_limited"].values()) == (TRACKED + 50) // 2
    assert len(now["gatewayd_tenant_requests"]) == 4


def test_metrics_exports_the_tenants_with_the_top_it_was_given() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.tenants.top = 1
    metrics.tenants.count("acme", True)
    metrics.tenants.count("globex", False)
    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["gatewayd_tenant_requests"].type == "counter"
    got = {
        (s.name, s.labels["tenant"]): s.value
        for name in ("gatewayd_tenant_requests", "gatewayd_tenant_limited")
        for s in families[name].samples
        if s.name.endswith("_total")
    }
    assert got == {
        ("gatewayd_tenant_requests_total", "acme"): 1,
        ("gatewayd_tenant_requests_total", "other"): 1,
        ("gatewayd_tenant_limited_total", "acme"): 1,
        ("gatewayd_tenant_limited_total", "other"): 0,
    }
