"""``circuit_breaker`` (gatewayd/plugins/circuit_breaker.py): config, then requests."""

from __future__ import annotations

import asyncio

import pytest

from gatewayd.chain import RequestContext, Response, UpstreamTimeout
from gatewayd.plugins.circuit_breaker import CircuitBreakerPlugin
from gatewayd.testing import ConfigError, PluginFailed, PluginHarness

# -- config ------------------------------------------------------------------------------------


def test_defaults_are_valid():
    h = PluginHarness(CircuitBreakerPlugin)
    assert h.plugin.config.failure_ratio == 0.5 and h.plugin.config.min_requests == 20


def test_the_contract_spelling_is_valid():
    config = {"failure_ratio": 0.5, "min_requests": 20, "window": "30s", "open_for": "15s"}
    h = PluginHarness(CircuitBreakerPlugin, config)
    assert h.plugin.config.window == 30.0 and h.plugin.config.open_for == 15.0


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"min_requests": 0}, "plugins[0].circuit_breaker.min_requests"),
        ({"failure_ratio": 1.5}, "plugins[0].circuit_breaker.failure_ratio"),
        ({"window": "soon"}, "plugins[0].circuit_breaker.window"),
        ({"half_open_probes": 0}, "plugins[0].circuit_breaker.half_open_probes"),
        ({"failure_errors": ["bogus"]}, "plugins[0].circuit_breaker.failure_errors[0]"),
        ({"open": "15s"}, "plugins[0].circuit_breaker.open"),
    ],
)
def test_invalid_configs_name_the_field(config, path):
    with pytest.raises(ConfigError) as err:
        PluginHarness(CircuitBreakerPlugin, config)
    assert [p.path for p in err.value.problems] == [path]


# -- requests ----------------------------------------------------------------------------------


class Backend:
    """A backend whose status the test sets (``fail`` = answer 502)."""

    def __init__(self) -> None:
        self.fail = False
        self.calls = 0

    async def __call__(self, ctx: RequestContext) -> Response:
        self.calls += 1
        return Response(502 if self.fail else 200, {}, b"bad" if self.fail else b"ok")


QUICK = {"consecutive_failures": 2, "open_for": "100ms"}


async def test_opens_after_failures_and_answers_503_without_calling_the_backend():
    """Defect 7 (regression): the harness gave the breaker no logger, so ``on_done`` raised at
    its first state change and the runner swallowed it: no event, no metric, no 503."""
    backend = Backend()
    async with PluginHarness(CircuitBreakerPlugin, QUICK, upstream=backend) as h:
        backend.fail = True
        assert (await h.request()).status == 502
        assert (await h.request()).status == 502
        assert h.failures == []
        opened = h.published("breaker.opened")
        assert len(opened) == 1
        assert opened[0].payload["target"] == "target-1" and opened[0].payload["route"] == "test"
        assert h.sample("gatewayd_breaker_state", upstream="test", target="target-1") == 2
        assert (
            h.sample(
                "gatewayd_breaker_transitions_total",
                upstream="test",
                target="target-1",
                state="open",
            )
            == 1
        )
        reply = await h.request()
        assert reply.status == 503 and b"upstream_unavailable" in reply.body
        assert reply.headers["Retry-After"] == "1"
        assert backend.calls == 2


async def test_half_open_probe_closes_it_again():
    backend = Backend()
    async with PluginHarness(CircuitBreakerPlugin, QUICK, upstream=backend) as h:
        backend.fail = True
        await h.request()
        await h.request()
        await asyncio.sleep(0.15)
        backend.fail = False
        assert (await h.request()).status == 200  # the probe
        assert [e.type for e in h.published() if e.type.startswith("breaker.")] == [
            "breaker.opened",
            "breaker.half_opened",
            "breaker.closed",
        ]
        assert h.sample("gatewayd_breaker_state", upstream="test", target="target-1") == 0
        assert (await h.request()).status == 200


async def test_a_failed_probe_opens_it_again():
    backend = Backend()
    async with PluginHarness(CircuitBreakerPlugin, QUICK, upstream=backend) as h:
        backend.fail = True
        await h.request()
        await h.request()
        await asyncio.sleep(0.15)
        assert (await h.request()).status == 502  # the probe fails
        assert (await h.request()).status == 503
        assert len(h.published("breaker.opened")) == 2


async def test_only_the_failing_target_is_excluded():
    async def one_bad(ctx: RequestContext) -> Response:
        return Response(503 if ctx.target == "bad" else 200, {}, b"")

    async with PluginHarness(
        CircuitBreakerPlugin, QUICK, upstream=one_bad, targets=["bad", "good"]
    ) as h:
        for _ in range(4):
            await h.request()
        assert [b.target for b in h.plugin.breakers() if b.state == "open"] == ["bad"]
        statuses = [(await h.request()).status for _ in range(4)]
        assert statuses == [200] * 4
        assert {r.target for r in h.upstream_requests[-4:]} == {"good"}


async def test_timeouts_count_as_failures_and_statuses_can_be_chosen():
    async def slow(ctx: RequestContext) -> Response:
        raise UpstreamTimeout()

    config = {**QUICK, "failure_errors": ["connect"]}
    async with PluginHarness(CircuitBreakerPlugin, config, upstream=slow) as h:
        for _ in range(3):
            assert (await h.request()).status == 504
        assert h.published("breaker.opened") == []  # timeouts were not configured as failures
    async with PluginHarness(CircuitBreakerPlugin, QUICK, upstream=slow) as h:
        await h.request()
        await h.request()
        assert (await h.request()).status == 503


async def test_ratio_needs_the_minimum_number_of_requests():
    backend = Backend()
    config = {"failure_ratio": 0.5, "min_requests": 4, "open_for": "1s"}
    async with PluginHarness(CircuitBreakerPlugin, config, upstream=backend) as h:
        await h.request()
        backend.fail = True
        await h.request()
        await h.request()  # 2 of 3 failed: below min_requests
        assert h.published("breaker.opened") == []
        await h.request()  # 3 of 4
        assert len(h.published("breaker.opened")) == 1


async def test_state_survives_a_reload_with_the_same_config_only():
    backend = Backend()
    h = PluginHarness(CircuitBreakerPlugin, QUICK, upstream=backend)
    backend.fail = True
    await h.request()
    await h.request()
    same = h.reload()
    assert (await same.request()).status == 503
    changed = h.reload({**QUICK, "open_for": "10s"})
    assert (await changed.request()).status == 502  # a new config starts closed
    await h.close()


async def test_a_breaker_whose_on_done_breaks_is_not_silent():
    """What the old harness did (``logger=None``) now fails the test instead of vanishing."""
    backend = Backend()
    async with PluginHarness(CircuitBreakerPlugin, QUICK, upstream=backend) as h:
        h.plugin.context.logger = None
        backend.fail = True
        await h.request()
        with pytest.raises(PluginFailed, match=r"circuit_breaker\.on_done: AttributeError"):
            await h.request()
