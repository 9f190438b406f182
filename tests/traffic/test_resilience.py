"""Circuit breaker, health checks, passive ejection and retries, with real failing backends."""

from __future__ import annotations

import asyncio

import aiohttp
import bcrypt
from aiohttp import web
from support import free_port, upstream_url
from traffic_helpers import Counting, get_many, route

ADMIN_TOKEN = "traffic-admin-token-0123456789"
ADMIN_HASH = bcrypt.hashpw(ADMIN_TOKEN.encode(), bcrypt.gensalt(4)).decode()
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
VIEWER_TOKEN = "traffic-viewer-token-0123456789"
VIEWER_HASH = bcrypt.hashpw(VIEWER_TOKEN.encode(), bcrypt.gensalt(4)).decode()
VIEWER = {"Authorization": f"Bearer {VIEWER_TOKEN}"}


def with_admin(cfg: dict) -> dict:
    cfg["admin"]["tokens"] = [
        {"id": "ops", "hash": ADMIN_HASH},
        {"id": "watcher", "hash": VIEWER_HASH, "role": "viewer"},
    ]
    return cfg


async def admin_upstreams(gw) -> dict:
    async with (
        aiohttp.ClientSession() as s,
        s.get(gw.admin_url + "/_admin/upstreams", headers=AUTH) as r,
    ):
        assert r.status == 200
        return {u["name"]: u for u in (await r.json())["upstreams"]}


async def test_breaker_opens_then_closes_through_half_open(gateway, backend, config):
    failing = {"n": 3}

    async def handler(request: web.Request) -> web.Response:
        if failing["n"] > 0:
            failing["n"] -= 1
            return web.Response(status=500, text="boom")
        return web.Response(text="ok")

    counting = Counting(handler)
    srv = await backend(counting.app)
    breaker = {"consecutive_failures": 3, "open_for": "1s", "min_requests": 100}
    cfg = with_admin(
        config(
            upstreams={"api": {"targets": [upstream_url(srv)]}},
            routes=[route(plugins=[{"circuit_breaker": breaker}])],
        )
    )
    gw = await gateway(cfg)
    assert [s for s, _ in await get_many(gw.url + "/x", 3)] == [500, 500, 500]
    assert counting.hits == 3
    # Open: answered at once, the target untouched.
    results = await get_many(gw.url + "/x", 5)
    assert [s for s, _ in results] == [503] * 5
    assert results[0][1]["Retry-After"] == "1"
    assert counting.hits == 3
    target = upstream_url(srv)
    ups = await admin_upstreams(gw)
    (t,) = ups["api"]["targets"]
    (note,) = t["plugins"]["circuit_breaker"]  # describe_target: one entry per route's breaker
    assert note["state"] == "open" and note["route"] == "api" and t["available"] is False
    assert await gw.metric("gatewayd_breaker_state", target=target, upstream="api") == 2
    await asyncio.sleep(1.1)
    # Half-open: one probe goes through; it succeeds, the breaker closes.
    assert [s for s, _ in await get_many(gw.url + "/x", 3)] == [200, 200, 200]
    assert counting.hits == 6
    assert await gw.metric("gatewayd_breaker_state", target=target, upstream="api") == 0
    for state in ("open", "half_open", "closed"):
        assert (
            await gw.metric(
                "gatewayd_breaker_transitions_total", state=state, target=target, upstream="api"
            )
            == 1
        )


async def test_breaker_ratio_over_window_and_failed_probe_reopens(gateway, backend, config):
    mode = {"fail": True}

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=503 if mode["fail"] else 200)

    counting = Counting(handler)
    srv = await backend(counting.app)
    breaker = {"failure_ratio": "50%", "min_requests": 4, "window": "10s", "open_for": "500ms"}
    gw = await gateway(
        config(
            upstreams={"api": {"targets": [upstream_url(srv)]}},
            routes=[route(plugins=[{"circuit_breaker": breaker}])],
        )
    )
    assert [s for s, _ in await get_many(gw.url + "/x", 6)] == [503] * 6
    assert counting.hits == 4  # opened at the 4th (4 requests, 100% failed)
    await asyncio.sleep(0.6)
    await get_many(gw.url + "/x", 1)  # the probe fails: open again
    assert counting.hits == 5
    await get_many(gw.url + "/x", 3)
    assert counting.hits == 5
    mode["fail"] = False
    await asyncio.sleep(0.6)
    assert [s for s, _ in await get_many(gw.url + "/x", 3)] == [200] * 3


async def test_breaker_skips_an_open_target_when_another_is_healthy(gateway, backend, config):
    bad = Counting(lambda r: asyncio.sleep(0, web.Response(status=500)))
    good = Counting()
    s1, s2 = await backend(bad.app), await backend(good.app)
    gw = await gateway(
        config(
            upstreams={"api": {"targets": [upstream_url(s1), upstream_url(s2)]}},
            routes=[
                route(plugins=[{"circuit_breaker": {"consecutive_failures": 2, "open_for": "1m"}}])
            ],
        )
    )
    await get_many(gw.url + "/x", 20)
    assert bad.hits == 2
    assert good.hits == 18


async def test_retries_go_to_another_target_and_respect_idempotency(gateway, backend, config):
    bad = Counting(lambda r: asyncio.sleep(0, web.Response(status=502)))
    good = Counting()
    s1, s2 = await backend(bad.app), await backend(good.app)
    upstreams = {
        "targets": [upstream_url(s1), upstream_url(s2)],
        "retries": {"attempts": 1, "backoff": "1ms", "budget": "100%"},
    }
    cfg = config(upstreams={"api": upstreams}, routes=[route()])
    gw = await gateway(cfg)
    assert [s for s, _ in await get_many(gw.url + "/x", 10)] == [200] * 10
    assert good.hits == 10 and 0 < bad.hits <= 10  # each request: at most one retry
    async with aiohttp.ClientSession() as s:
        statuses = []
        for _ in range(4):
            async with s.post(gw.url + "/x", data=b"payload") as r:
                statuses.append(r.status)
        assert sorted(statuses) == [200, 200, 502, 502]  # a POST is not replayed
    # A route that opts in replays a POST carrying an Idempotency-Key (its body buffered).
    cfg["upstreams"]["api"]["retries"]["idempotency_key"] = True
    gw.write_config(cfg)
    await gw.reload()
    async with aiohttp.ClientSession() as s:
        for _ in range(4):
            async with s.post(
                gw.url + "/x", data=b"payload", headers={"Idempotency-Key": "k1"}
            ) as r:
                assert r.status == 200


async def test_connect_refused_is_retried_for_any_method(gateway, backend, config):
    good = Counting()
    s2 = await backend(good.app)
    dead = f"http://127.0.0.1:{free_port()}"
    upstreams = {
        "targets": [dead, upstream_url(s2)],
        "retries": {"attempts": 1, "backoff": "1ms", "budget": "100%"},
    }
    gw = await gateway(config(upstreams={"api": upstreams}, routes=[route()]))
    async with aiohttp.ClientSession() as s:
        for _ in range(6):
            async with s.post(gw.url + "/x", data=b"x" * 100) as r:
                assert r.status == 200


async def test_retry_storm_is_capped_by_the_budget(gateway, backend, config):
    bad = Counting(lambda r: asyncio.sleep(0, web.Response(status=503)))
    s1 = await backend(bad.app)
    upstreams = {
        "targets": [upstream_url(s1)],
        "retries": {"attempts": 3, "backoff": "1ms", "budget": "10%", "min_retries": 3},
    }
    gw = await gateway(config(upstreams={"api": upstreams}, routes=[route()]))
    results = await get_many(gw.url + "/x", 200, concurrency=10)
    assert [s for s, _ in results] == [503] * 200
    # Without a budget this would be 800 backend requests.
    assert 200 < bad.hits <= 200 + 20 + 3
    exhausted = await gw.metric(
        "gatewayd_upstream_retries_total", outcome="budget_exhausted", upstream="api"
    )
    assert exhausted > 100


async def test_health_checks_take_a_target_out_and_back(gateway, backend, config):
    health = {"ok": True}

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/healthz":
            return web.Response(status=200 if health["ok"] else 500)
        return web.Response(text="a")

    a = Counting(handler)
    b = Counting()
    s1, s2 = await backend(a.app), await backend(b.app)
    hc = {"path": "/healthz", "interval": "100ms", "unhealthy_after": 2, "healthy_after": 2}
    cfg = with_admin(
        config(
            upstreams={"api": {"targets": [upstream_url(s1), upstream_url(s2)], "health": hc}},
            routes=[route()],
        )
    )
    gw = await gateway(cfg)
    health["ok"] = False
    await asyncio.sleep(0.5)
    before = a.hits
    await get_many(gw.url + "/x", 10)
    assert a.hits == before
    ups = await admin_upstreams(gw)
    t0 = ups["api"]["targets"][0]
    assert t0["healthy"] is False and t0["health_check"]["last_status"] == 500
    failures = t0["health_check"]["consecutive_failures"]
    # An unrelated reload keeps the health state (no window where the bad target is back).
    cfg["routes"].append(route("other", path="/other/"))
    gw.write_config(cfg)
    await gw.reload()
    await get_many(gw.url + "/x", 10)
    assert a.hits == before
    ups = await admin_upstreams(gw)
    assert ups["api"]["targets"][0]["health_check"]["consecutive_failures"] >= failures
    health["ok"] = True
    await asyncio.sleep(0.5)
    await get_many(gw.url + "/x", 10)
    assert a.hits > before
    assert (
        await gw.metric("gatewayd_upstream_target_up", target=upstream_url(s1), upstream="api") == 1
    )


async def test_503_with_retry_after_when_no_target_is_left(gateway, backend, config):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=500 if request.path == "/healthz" else 200)

    a = Counting(handler)
    s1 = await backend(a.app)
    hc = {"interval": "100ms", "unhealthy_after": 1}
    gw = await gateway(
        config(upstreams={"api": {"targets": [upstream_url(s1)], "health": hc}}, routes=[route()])
    )
    await asyncio.sleep(0.4)
    results = await get_many(gw.url + "/x", 3)
    assert [s for s, _ in results] == [503] * 3
    assert results[0][1]["Retry-After"]
    assert a.hits == 0


async def test_passive_ejection(gateway, backend, config):
    bad = Counting(lambda r: asyncio.sleep(0, web.Response(status=502)))
    good = Counting()
    s1, s2 = await backend(bad.app), await backend(good.app)
    up = {
        "targets": [upstream_url(s1), upstream_url(s2)],
        "passive": {"failures": 2, "eject_for": "1m"},
    }
    gw = await gateway(config(upstreams={"api": up}, routes=[route()]))
    await get_many(gw.url + "/x", 20)
    assert bad.hits == 2 and good.hits == 18


async def test_target_killed_under_load_costs_under_a_tenth_of_a_percent(gateway, backend, config):
    async def slowish(request: web.Request) -> web.Response:
        await asyncio.sleep(0.002)
        return web.Response(text="ok")

    a, b = Counting(slowish), Counting(slowish)
    s1, s2 = await backend(a.app), await backend(b.app)
    up = {
        "targets": [upstream_url(s1), upstream_url(s2)],
        "health": {"interval": "200ms", "timeout": "200ms", "unhealthy_after": 1},
        "retries": {"attempts": 2, "backoff": "5ms", "budget": "20%"},
        "passive": {"failures": 3, "eject_for": "10s"},
    }
    gw = await gateway(config(upstreams={"api": up}, routes=[route()]))
    total = 3000
    statuses: list[int] = []
    async with aiohttp.ClientSession() as s:
        sem = asyncio.Semaphore(20)

        async def one(i: int) -> None:
            async with sem:
                if i == total // 3:
                    await s1.close()  # the target dies mid-run, in-flight requests included
                try:
                    async with s.get(gw.url + f"/x{i}") as r:
                        await r.read()
                        statuses.append(r.status)
                except aiohttp.ClientError:
                    statuses.append(0)

        await asyncio.gather(*(one(i) for i in range(total)))
    failed = sum(1 for st in statuses if st != 200)
    assert failed <= total // 1000, f"{failed} failed of {total}"
    assert a.hits > 0 and b.hits > total // 2
