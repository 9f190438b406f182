"""``rate_limit`` (gatewayd/plugins/rate_limit.py): config, then requests (memory store; the
Redis store at the end, on a real redis-server)."""

from __future__ import annotations

import pytest

from gatewayd.chain import Principal
from gatewayd.plugins.rate_limit import RateLimitPlugin
from gatewayd.testing import ConfigError, HarnessServices, PluginHarness

# -- config ------------------------------------------------------------------------------------


def test_policies_are_derived_from_the_limits():
    h = PluginHarness(RateLimitPlugin, {"rate": "100/s", "burst": 200, "key": "api_key"})
    assert h.plugin.policy == "200;w=2"
    h = PluginHarness(RateLimitPlugin, {"limits": [{"rate": "5/s"}, {"quota": "1000/day"}]})
    assert h.plugin.policy == "5;w=1, 1000;w=86400"


@pytest.mark.parametrize(
    ("config", "path", "message"),
    [
        ({}, "plugins[0].rate_limit", "set 'rate' (and 'burst'), 'quota', or 'limits'"),
        ({"rate": "fast"}, "plugins[0].rate_limit.rate", "invalid rate 'fast'"),
        ({"rate": "1/s", "key": "cookie"}, "plugins[0].rate_limit.key", "invalid key 'cookie'"),
        ({"rate": "1/s", "key": "header:"}, "plugins[0].rate_limit.key", "header:<name>"),
        ({"rate": "1/s", "burst": 0}, "plugins[0].rate_limit.burst", "greater than or equal"),
        ({"quota": "9/day", "burst": 2}, "plugins[0].rate_limit", "'burst' goes with 'rate'"),
        (
            {"limits": [{"rate": "1/s", "quota": "1/day"}]},
            "plugins[0].rate_limit.limits[0]",
            "either 'rate'",
        ),
        ({"rate": "1/s", "store": "disk"}, "plugins[0].rate_limit.store", "'memory' or 'redis'"),
        ({"rate": "1/s", "on_missing_key": "allow"}, "plugins[0].rate_limit.on_missing_key", ""),
    ],
)
def test_invalid_configs_name_the_field(config, path, message):
    with pytest.raises(ConfigError) as err:
        PluginHarness(RateLimitPlugin, config)
    (problem,) = err.value.problems
    assert problem.path == path and message in problem.message


# -- requests ----------------------------------------------------------------------------------


async def statuses(h: PluginHarness, n: int, **kw) -> list[int]:
    return [(await h.request(**kw)).status for _ in range(n)]


async def test_a_burst_then_429_with_the_ietf_headers():
    async with PluginHarness(RateLimitPlugin, {"rate": "1/min", "burst": 3}) as h:
        replies = [await h.request() for _ in range(4)]
        assert [r.status for r in replies] == [200, 200, 200, 429]
        assert [r.headers["RateLimit-Remaining"] for r in replies[:3]] == ["2", "1", "0"]
        assert replies[0].headers["RateLimit-Limit"] == "3"
        assert replies[0].headers["RateLimit-Policy"] == "3;w=180"
        limited = replies[3]
        assert limited.headers["RateLimit-Remaining"] == "0"
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert b'"code":"rate_limited"' in limited.body
        assert len(h.upstream_requests) == 3
        assert h.sample("gatewayd_ratelimit_total", route="test", result="limited") == 1
        assert h.sample("gatewayd_ratelimit_total", route="test", result="allowed") == 3
        (event,) = h.published("ratelimit.exceeded")
        assert event.payload["client"] == "127.0.0.1" and event.payload["route"] == "test"


async def test_remaining_is_exact_for_rates_with_inexact_intervals():
    """Issue 10, defect 8: ``rate: 5/s, burst: 5`` said 3 left after the first request."""
    config = {"rate": "5/s", "burst": 5, "key": "header:X-Client"}
    async with PluginHarness(RateLimitPlugin, config) as h:
        for i in range(20):
            reply = await h.request(headers={"X-Client": f"c{i}"})
            assert reply.headers["RateLimit-Remaining"] == "4", i
    async with PluginHarness(RateLimitPlugin, {"rate": "6/s", "burst": 6}) as h:
        remaining = [(await h.request()).headers.get("RateLimit-Remaining") for _ in range(7)]
        assert remaining == ["5", "4", "3", "2", "1", "0", "0"]


async def test_key_ip_is_the_requests_client_ip():
    async with PluginHarness(RateLimitPlugin, {"rate": "1/min", "burst": 1}) as h:
        assert await statuses(h, 2, client_ip="198.51.100.1") == [200, 429]
        assert await statuses(h, 1, client_ip="198.51.100.2") == [200]
        # X-Forwarded-For is the listener's business (ctx.request.client_ip), not the plugin's
        assert await statuses(h, 1, headers={"X-Forwarded-For": "198.51.100.3"}) == [200]
        assert await statuses(h, 1, headers={"X-Forwarded-For": "198.51.100.4"}) == [429]


async def test_keys_by_principal_header_and_claim():
    acme = Principal("key", tenant="acme", key_id="k-1", claims={"org": "acme"})
    other = Principal("key", tenant="acme", key_id="k-2", claims={"org": "initech"})
    async with PluginHarness(RateLimitPlugin, {"rate": "1/min", "burst": 1, "key": "api_key"}) as h:
        assert await statuses(h, 2, principal=acme) == [200, 429]
        assert await statuses(h, 1, principal=other) == [200]
    async with PluginHarness(RateLimitPlugin, {"rate": "1/min", "burst": 1, "key": "tenant"}) as h:
        assert await statuses(h, 1, principal=acme) == [200]
        assert await statuses(h, 1, principal=other) == [429]  # the same tenant
    config = {"rate": "1/min", "burst": 1, "key": "claim:org"}
    async with PluginHarness(RateLimitPlugin, config) as h:
        assert await statuses(h, 1, principal=acme) == [200]
        assert await statuses(h, 1, principal=other) == [200]
    config = {"rate": "1/min", "burst": 1, "key": "header:X-Tenant"}
    async with PluginHarness(RateLimitPlugin, config) as h:
        long = "t" * 10_000  # hashed: a hostile header cannot grow memory
        assert await statuses(h, 2, headers={"X-Tenant": long}) == [200, 429]


async def test_a_missing_key_falls_back_to_the_ip_or_is_refused():
    config = {"rate": "1/min", "burst": 1, "key": "tenant"}
    async with PluginHarness(RateLimitPlugin, config) as h:
        assert await statuses(h, 2) == [200, 429]  # no principal: keyed by the client IP
    async with PluginHarness(RateLimitPlugin, {**config, "on_missing_key": "deny"}) as h:
        reply = await h.request()
        assert reply.status == 403 and b"rate_limit_key_missing" in reply.body


async def test_every_limit_must_admit_and_the_tightest_is_reported():
    config = {"limits": [{"rate": "100/s", "burst": 50}, {"quota": "2/day", "key": "global"}]}
    async with PluginHarness(RateLimitPlugin, config) as h:
        first = await h.request()
        assert (
            first.headers["RateLimit-Limit"] == "2" and first.headers["RateLimit-Remaining"] == "1"
        )
        assert first.headers["RateLimit-Policy"] == "50;w=0.5, 2;w=86400"
        assert await statuses(h, 2, client_ip="192.0.2.1") == [200, 429]  # the quota is global


async def test_a_reload_keeps_the_bucket_unless_the_config_changes():
    config = {"rate": "1/min", "burst": 2}
    async with PluginHarness(RateLimitPlugin, config) as h:
        assert await statuses(h, 2) == [200, 200]
        same = h.reload(config)
        assert await statuses(same, 1) == [429]  # a reload is no way around a limit
        changed = same.reload({"rate": "1/min", "burst": 3})
        assert await statuses(changed, 1) == [200]


@pytest.mark.redis
async def test_the_redis_store_counts_exactly_too(redis_server):
    services = HarnessServices(backend="redis", redis_url=redis_server.url)
    try:
        config = {"rate": "6/s", "burst": 6, "key": "header:X-Client"}
        async with PluginHarness(RateLimitPlugin, config, services=services) as h:
            for i in range(10):
                reply = await h.request(headers={"X-Client": f"c{i}"})
                assert reply.headers["RateLimit-Remaining"] == "5", i  # defect 8 on Redis
            burst = [await h.request(headers={"X-Client": "b"}) for _ in range(7)]
            assert [r.status for r in burst] == [200] * 6 + [429]
            assert burst[-1].headers["RateLimit-Remaining"] == "0"
    finally:
        await services.close()
