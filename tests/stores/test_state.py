"""PluginStores: named memory limiters live as long as the process (what a plugin's counters
need to outlive a reload that changes its config), unnamed ones are new each time."""

from __future__ import annotations

from gatewayd.config.schema import StateConfig
from gatewayd.stores.state import PluginStores


def test_a_named_memory_limiter_is_the_same_for_every_generation() -> None:
    stores = PluginStores(StateConfig())
    first = stores.memory_limiter(10, name="gatewayd:llm:a")
    assert first.reserve([("k", 5, 60, 3)]).allowed
    again = stores.memory_limiter(10, name="gatewayd:llm:a")
    assert again is first and again.reserve([("k", 5, 60, 0)]).used == [3]
    assert stores.memory_limiter(10, name="gatewayd:llm:b") is not first
    assert stores.memory_limiter(10) is not stores.memory_limiter(10)


def test_the_latest_bound_holds() -> None:
    stores = PluginStores(StateConfig())
    limiter = stores.memory_limiter(10, name="n")
    for i in range(10):
        limiter.reserve([(f"k{i}", 5, 60, 1)])
    assert len(limiter) == 10
    stores.memory_limiter(3, name="n")  # the reloaded config asks for fewer entries
    limiter.reserve([("new", 5, 60, 1)])
    assert len(limiter) == 3 and limiter.evictions == 8


def test_shared_objects_are_the_processs_by_name() -> None:
    stores = PluginStores(StateConfig())
    made: list[int] = []

    def factory() -> set[str]:
        made.append(1)
        return set()

    tenants = stores.shared("llm:metrics:tenants", factory)
    tenants.add("acme")
    assert stores.shared("llm:metrics:tenants", factory) == {"acme"}
    assert stores.shared("other", set) is not tenants
    assert made == [1]
