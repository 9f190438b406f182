"""rate_limit against a real daemon and a backend that counts what reaches it."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from support import upstream_url
from traffic_helpers import Counting, get_many, route


def rl_config(config, srv, plugin: dict, state: dict | None = None):
    cfg = config(
        upstreams={"api": {"targets": [upstream_url(srv)]}},
        routes=[route(plugins=[{"rate_limit": plugin}])],
    )
    cfg["state"].update(state or {})
    return cfg


async def test_burst_gets_exact_429_count_and_headers(gateway, backend, config):
    counting = Counting()
    srv = await backend(counting.app)
    gw = await gateway(rl_config(config, srv, {"rate": "1/min", "burst": 5, "key": "ip"}))
    results = await get_many(gw.url + "/x", 12)
    statuses = [s for s, _ in results]
    assert statuses.count(200) == 5
    assert statuses.count(429) == 7
    assert counting.hits == 5
    ok = [h for s, h in results if s == 200]
    assert [int(h["RateLimit-Remaining"]) for h in ok] == [4, 3, 2, 1, 0]
    assert all(h["RateLimit-Limit"] == "5" for h in ok)
    assert ok[0]["RateLimit-Policy"] == "5;w=300"
    denied = [h for s, h in results if s == 429]
    for h in denied:
        assert h["RateLimit-Remaining"] == "0"
        assert 1 <= int(h["Retry-After"]) <= 60
        assert int(h["RateLimit-Reset"]) > 0
        assert h["Content-Type"] == "application/json"
    assert await gw.metric("gatewayd_ratelimit_total", result="limited", route="api") == 7


async def test_concurrent_burst_is_exact(gateway, backend, config):
    counting = Counting()
    srv = await backend(counting.app)
    gw = await gateway(rl_config(config, srv, {"rate": "1/min", "burst": 20}))
    results = await get_many(gw.url + "/x", 100, concurrency=50)
    assert [s for s, _ in results].count(200) == 20
    assert counting.hits == 20


async def test_quota_window_and_multiple_limits(gateway, backend, config):
    counting = Counting()
    srv = await backend(counting.app)
    plugin = {"limits": [{"rate": "100/s", "burst": 50}, {"quota": "3/day", "key": "global"}]}
    gw = await gateway(rl_config(config, srv, plugin))
    results = await get_many(gw.url + "/x", 5)
    assert [s for s, _ in results] == [200, 200, 200, 429, 429]
    ok_headers = results[0][1]
    assert ok_headers["RateLimit-Limit"] == "3"  # the most restrictive limit is reported
    assert ok_headers["RateLimit-Remaining"] == "2"
    assert ok_headers["RateLimit-Policy"] == "50;w=0.5, 3;w=86400"
    assert int(results[3][1]["Retry-After"]) > 60  # until the day's window ends


async def test_keys_by_header_give_separate_budgets(gateway, backend, config):
    counting = Counting()
    srv = await backend(counting.app)
    gw = await gateway(
        rl_config(config, srv, {"rate": "1/min", "burst": 2, "key": "header:X-Client"})
    )
    a = await get_many(gw.url + "/x", 3, headers={"X-Client": "a"})
    b = await get_many(gw.url + "/x", 3, headers={"X-Client": "b"})
    assert [s for s, _ in a] == [200, 200, 429]
    assert [s for s, _ in b] == [200, 200, 429]


async def test_missing_key_falls_back_to_ip_or_denies(gateway, backend, config):
    counting = Counting()
    srv = await backend(counting.app)
    cfg = config(
        upstreams={"api": {"targets": [upstream_url(srv)]}},
        routes=[
            route(
                "fallback",
                path="/a/",
                plugins=[{"rate_limit": {"rate": "1/min", "burst": 1, "key": "api_key"}}],
            ),
            route(
                "strict",
                path="/b/",
                plugins=[
                    {
                        "rate_limit": {
                            "rate": "1/min",
                            "burst": 1,
                            "key": "tenant",
                            "on_missing_key": "deny",
                        }
                    }
                ],
            ),
        ],
    )
    gw = await gateway(cfg)
    assert [s for s, _ in await get_many(gw.url + "/a/x", 2)] == [200, 429]
    assert [s for s, _ in await get_many(gw.url + "/b/x", 1)] == [403]


async def test_reload_does_not_refill_the_bucket(gateway, backend, config):
    counting = Counting()
    srv = await backend(counting.app)
    cfg = rl_config(config, srv, {"rate": "1/min", "burst": 3})
    gw = await gateway(cfg)
    assert [s for s, _ in await get_many(gw.url + "/x", 3)] == [200, 200, 200]
    cfg["routes"].append(route("other", path="/other/"))  # an unrelated change
    gw.write_config(cfg)
    await gw.reload()
    assert [s for s, _ in await get_many(gw.url + "/x", 2)] == [429, 429]
    # A changed limit starts a new bucket (it is a different limit).
    cfg["routes"][0]["plugins"][0]["rate_limit"]["burst"] = 4
    gw.write_config(cfg)
    await gw.reload()
    assert [s for s, _ in await get_many(gw.url + "/x", 5)] == [200] * 4 + [429]


def test_config_errors_are_clear():
    from gatewayd.plugins.rate_limit import RateLimitConfig

    with pytest.raises(ValueError, match="invalid key"):
        RateLimitConfig.model_validate({"rate": "1/s", "key": "cookie"})
    with pytest.raises(ValueError, match="either 'rate'"):
        RateLimitConfig.model_validate({"rate": "1/s", "quota": "10/day"})
    with pytest.raises(ValueError, match="set 'rate'"):
        RateLimitConfig.model_validate({"key": "ip"})


@pytest.mark.redis
async def test_two_gateways_share_one_redis_budget(gateway, backend, config, redis_server):
    counting = Counting()
    srv = await backend(counting.app)
    state = {"backend": "redis", "redis_url": redis_server.url}
    plugin = {"rate": "1/min", "burst": 10, "key": "global"}
    gw1 = await gateway(rl_config(config, srv, plugin, state=state))
    cfg2 = rl_config(config, srv, plugin, state=state)
    cfg2["state"]["dir"] += "-second"  # its own pid file
    gw2 = await gateway(cfg2)
    # Six through the first gateway, then the second may only spend what is left...
    first = await get_many(gw1.url + "/x", 6)
    assert [s for s, _ in first] == [200] * 6
    second = await get_many(gw2.url + "/x", 8)
    assert [s for s, _ in second] == [200] * 4 + [429] * 4
    # ...and both, hammered at once, give out nothing more.
    r1, r2 = await asyncio.gather(
        get_many(gw1.url + "/x", 15, concurrency=5), get_many(gw2.url + "/x", 15, concurrency=5)
    )
    assert [s for s, _ in r1 + r2].count(200) == 0
    assert counting.hits == 10


@pytest.mark.redis
@pytest.mark.parametrize("policy,expected", [("allow", 200), ("deny", 503)])
async def test_redis_down_follows_on_store_error(
    gateway, backend, config, redis_server, policy, expected
):
    counting = Counting()
    srv = await backend(counting.app)
    state = {"backend": "redis", "redis_url": redis_server.url}
    plugin = {"rate": "1/min", "burst": 2, "on_store_error": policy}
    gw = await gateway(rl_config(config, srv, plugin, state=state))
    assert [s for s, _ in await get_many(gw.url + "/x", 3)] == [200, 200, 429]
    redis_server.stop()
    results = await get_many(gw.url + "/x", 3)
    assert [s for s, _ in results] == [expected] * 3
    if expected == 503:
        assert results[0][1]["Retry-After"] == "1"
    assert await gw.metric("gatewayd_ratelimit_total", result="store_error", route="api") == 3
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/x") as r:
        assert r.status == expected  # still answering, no hang


async def first_remaining(url: str, clients: int) -> list[int]:
    """RateLimit-Remaining on the first request of each of ``clients`` fresh keys."""
    out = []
    async with aiohttp.ClientSession() as s:
        for i in range(clients):
            async with s.get(url, headers={"X-Client": f"c{i}"}) as r:
                assert r.status == 200
                out.append(int(r.headers["RateLimit-Remaining"]))
    return out


async def test_remaining_is_exact_for_rates_with_inexact_intervals(gateway, backend, config):
    """Defect 8 of issue 10: with rate 5/s, burst 5 the first answer said 3 (float error in
    "now + 0.2 - now" at today's epoch), not 4."""
    counting = Counting()
    srv = await backend(counting.app)
    cfg = config(
        upstreams={"api": {"targets": [upstream_url(srv)]}},
        routes=[
            route(plugins=[{"rate_limit": {"rate": "5/s", "burst": 5, "key": "header:X-Client"}}]),
            route(
                "six",
                path="/six/",
                plugins=[{"rate_limit": {"rate": "6/s", "burst": 6, "key": "header:X-Client"}}],
            ),
        ],
    )
    gw = await gateway(cfg)
    assert await first_remaining(gw.url + "/x", 10) == [4] * 10
    assert await first_remaining(gw.url + "/six/x", 10) == [5] * 10


@pytest.mark.redis
async def test_redis_remaining_is_exact_for_rates_with_inexact_intervals(
    gateway, backend, config, redis_server
):
    """The same on the Redis store, whose Lua script rounds to microseconds: with 6/s it said 4
    (0.166667 s used of 1 s), not 5."""
    counting = Counting()
    srv = await backend(counting.app)
    state = {"backend": "redis", "redis_url": redis_server.url}
    cfg = config(
        upstreams={"api": {"targets": [upstream_url(srv)]}},
        routes=[
            route(plugins=[{"rate_limit": {"rate": "6/s", "burst": 6, "key": "header:X-Client"}}]),
            route(
                "five",
                path="/five/",
                plugins=[{"rate_limit": {"rate": "5/s", "burst": 5, "key": "header:X-Client"}}],
            ),
        ],
    )
    cfg["state"].update(state)
    gw = await gateway(cfg)
    assert await first_remaining(gw.url + "/x", 10) == [5] * 10
    assert await first_remaining(gw.url + "/five/x", 10) == [4] * 10
    # A whole burst at once still counts down to zero, then refuses.
    results = await get_many(gw.url + "/x", 8, headers={"X-Client": "burst"})
    assert [s for s, _ in results] == [200] * 6 + [429] * 2
    assert [int(h["RateLimit-Remaining"]) for _, h in results[:6]] == [5, 4, 3, 2, 1, 0]
