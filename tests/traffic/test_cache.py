"""cache against real backends: what reaches the backend is counted."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from support import upstream_url
from test_resilience import AUTH, VIEWER, with_admin
from traffic_helpers import Counting, get_many, route


def cache_cfg(config, srv, plugin: dict | None = None, **up):
    return with_admin(
        config(
            upstreams={"api": {"targets": [upstream_url(srv)], **up}},
            routes=[route(plugins=[{"cache": plugin or {}}])],
        )
    )


async def test_hundred_concurrent_cold_requests_reach_the_backend_once(gateway, backend, config):
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.3)
        return web.Response(text="payload" * 100, headers={"Cache-Control": "max-age=60"})

    counting = Counting(slow)
    srv = await backend(counting.app)
    gw = await gateway(cache_cfg(config, srv))
    results = await get_many(gw.url + "/cold", 100, concurrency=100)
    assert [s for s, _ in results] == [200] * 100
    assert counting.hits == 1
    caches = sorted(h["X-Cache"] for _, h in results)
    assert caches.count("MISS") == 1 and caches.count("HIT") == 99


async def test_hit_miss_age_and_default_ttl(gateway, backend, config):
    async def handler(request: web.Request) -> web.Response:
        if request.path == "/silent":
            return web.Response(text="s")
        if request.path == "/nostore":
            return web.Response(text="n", headers={"Cache-Control": "no-store"})
        return web.Response(text="x", headers={"Cache-Control": "max-age=100", "Age": "10"})

    counting = Counting(handler)
    srv = await backend(counting.app)
    gw = await gateway(cache_cfg(config, srv, {"default_ttl": "60s"}))
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/a") as r:
            assert r.headers["X-Cache"] == "MISS"
        async with s.get(gw.url + "/a") as r:
            assert r.headers["X-Cache"] == "HIT"
            assert int(r.headers["Age"]) >= 10
            assert await r.text() == "x"
        async with s.get(gw.url + "/a?q=1") as r:  # the query is part of the key
            assert r.headers["X-Cache"] == "MISS"
        for _ in range(2):
            async with s.get(gw.url + "/silent") as r:
                pass
        assert r.headers["X-Cache"] == "HIT"  # default_ttl
        for _ in range(2):
            async with s.get(gw.url + "/nostore") as r:
                assert r.headers["X-Cache"] == "MISS"
        async with s.get(gw.url + "/a", headers={"Cache-Control": "no-store"}) as r:
            assert r.headers["X-Cache"] == "BYPASS"
        async with s.head(gw.url + "/a") as r:
            assert r.headers["X-Cache"] == "HIT"
    assert counting.hits == 6  # /a, /a?q=1, /silent, /nostore x2, bypass


async def test_vary_and_private_and_authorization(gateway, backend, config):
    async def handler(request: web.Request) -> web.Response:
        if request.path == "/private":
            return web.Response(text="mine", headers={"Cache-Control": "private, max-age=60"})
        if request.path == "/public":
            return web.Response(text="pub", headers={"Cache-Control": "public, max-age=60"})
        lang = request.headers.get("Accept-Language", "none")
        return web.Response(
            text=lang, headers={"Cache-Control": "max-age=60", "Vary": "Accept-Language"}
        )

    counting = Counting(handler)
    srv = await backend(counting.app)
    gw = await gateway(cache_cfg(config, srv))
    async with aiohttp.ClientSession() as s:
        for lang in ("en", "fr", "en", "fr"):
            async with s.get(gw.url + "/v", headers={"Accept-Language": lang}) as r:
                assert await r.text() == lang
        assert counting.hits == 2
        for _ in range(3):
            async with s.get(gw.url + "/private") as r:
                assert r.headers["X-Cache"] == "MISS"
        assert counting.hits == 5
        # A response to a request with Authorization is stored only if it says public.
        auth = {"Authorization": "Bearer abc"}
        for _ in range(2):
            async with s.get(gw.url + "/v?auth", headers=auth) as r:
                assert r.headers["X-Cache"] == "MISS"
        for _ in range(2):
            async with s.get(gw.url + "/public", headers=auth) as r:
                pass
        assert r.headers["X-Cache"] == "HIT"
    assert counting.hits == 8


async def test_304_revalidation_refreshes_and_conditional_clients(gateway, backend, config):
    seen = {"conditional": 0}

    async def handler(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == '"v1"':
            seen["conditional"] += 1
            return web.Response(status=304, headers={"ETag": '"v1"', "Cache-Control": "max-age=1"})
        return web.Response(text="body-v1", headers={"ETag": '"v1"', "Cache-Control": "max-age=1"})

    counting = Counting(handler)
    srv = await backend(counting.app)
    gw = await gateway(cache_cfg(config, srv))
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/r") as r:
            assert r.headers["X-Cache"] == "MISS"
        await asyncio.sleep(1.2)
        async with s.get(gw.url + "/r") as r:  # stale: revalidated with If-None-Match
            assert r.status == 200 and await r.text() == "body-v1"
            assert r.headers["X-Cache"] == "HIT"
        assert seen["conditional"] == 1
        async with s.get(gw.url + "/r") as r:  # the 304 refreshed the entry
            assert r.headers["X-Cache"] == "HIT"
        assert counting.hits == 2
        async with s.get(gw.url + "/r", headers={"If-None-Match": '"v1"'}) as r:
            assert r.status == 304
            assert r.headers["ETag"] == '"v1"'
        assert counting.hits == 2


async def test_stale_if_error_when_backend_down_or_breaker_open(gateway, backend, config):
    state = {"fail": False}

    async def handler(request: web.Request) -> web.Response:
        if state["fail"]:
            return web.Response(status=500)
        return web.Response(text="good", headers={"Cache-Control": "max-age=1, stale-if-error=60"})

    counting = Counting(handler)
    srv = await backend(counting.app)
    cfg = with_admin(
        config(
            upstreams={"api": {"targets": [upstream_url(srv)]}},
            routes=[
                route(
                    plugins=[
                        {"circuit_breaker": {"consecutive_failures": 2, "open_for": "1m"}},
                        {"cache": {}},
                    ]
                )
            ],
        )
    )
    gw = await gateway(cfg)
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/e") as r:
            assert await r.text() == "good"
        await asyncio.sleep(1.2)
        state["fail"] = True
        for _ in range(4):  # 2 reach the failing backend, then the breaker opens
            async with s.get(gw.url + "/e") as r:
                assert r.status == 200 and await r.text() == "good"
                assert r.headers["X-Cache"] == "STALE"
        assert counting.hits == 3
        async with s.get(gw.url + "/other") as r:  # nothing stale to serve
            assert r.status == 503


async def test_stale_while_revalidate_refreshes_in_background(gateway, backend, config):
    version = {"n": 1}

    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)
        return web.Response(
            text=f"v{version['n']}",
            headers={"Cache-Control": "max-age=1, stale-while-revalidate=30"},
        )

    counting = Counting(handler)
    srv = await backend(counting.app)
    gw = await gateway(cache_cfg(config, srv))
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/w") as r:
            assert await r.text() == "v1"
        await asyncio.sleep(1.2)
        version["n"] = 2
        async with s.get(gw.url + "/w") as r:
            assert await r.text() == "v1" and r.headers["X-Cache"] == "STALE"
        await asyncio.sleep(0.5)
        async with s.get(gw.url + "/w") as r:
            assert await r.text() == "v2" and r.headers["X-Cache"] == "HIT"
    assert counting.hits == 2


async def test_background_revalidation_goes_to_the_upstream_not_through_the_chain(
    gateway, backend, config
):
    """The refresh is a conditional request to the route's upstream, forwarded as the daemon
    forwards (path mapping, X-Forwarded-*), never a request to the gateway's own listener."""
    seen: list[dict[str, str | None]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(
            {
                "path": request.path,
                "inm": request.headers.get("If-None-Match"),
                "xff": request.headers.get("X-Forwarded-For"),
                "rid": request.headers.get("X-Request-ID"),
            }
        )
        headers = {"Cache-Control": "max-age=1, stale-while-revalidate=30", "ETag": '"v1"'}
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers=headers)
        return web.Response(text="body-v1", headers=headers)

    counting = Counting(handler)
    srv = await backend(counting.app)
    cfg = cache_cfg(config, srv)
    cfg["routes"][0].update({"match": {"path": "/api/"}, "strip_prefix": True})
    gw = await gateway(cfg)
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/api/w") as r:
            assert await r.text() == "body-v1" and r.headers["X-Cache"] == "MISS"
        await asyncio.sleep(1.2)
        async with s.get(gw.url + "/api/w") as r:
            assert await r.text() == "body-v1" and r.headers["X-Cache"] == "STALE"
        for _ in range(50):
            if counting.hits == 2:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        async with s.get(gw.url + "/api/w") as r:  # freshened by the 304
            assert await r.text() == "body-v1" and r.headers["X-Cache"] == "HIT"
            assert int(r.headers["Age"]) < 1
    assert counting.hits == 2
    first, refresh = seen
    assert first["path"] == refresh["path"] == "/w"  # the route's path mapping
    assert refresh["inm"] == '"v1"' and first["inm"] is None  # conditional, with the validator
    assert refresh["xff"] == "127.0.0.1" and refresh["rid"] and refresh["rid"] != first["rid"]
    # Only the three client requests went through the listener and the chain.
    assert await gw.metric("gatewayd_requests_total", route="api", status="200") == 3


async def test_large_bodies_stream_and_are_not_stored(gateway, backend, config):
    big = b"z" * (300 * 1024)

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Cache-Control": "max-age=60"})
        await resp.prepare(request)
        for i in range(0, len(big), 64 * 1024):
            await resp.write(big[i : i + 64 * 1024])
        await resp.write_eof()
        return resp

    counting = Counting(handler)
    srv = await backend(counting.app)
    gw = await gateway(cache_cfg(config, srv, {"max_object": "256KiB"}))
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.get(gw.url + "/big") as r:
                assert await r.read() == big
        assert counting.hits == 2
        async with s.get(gw.url + "/small-stream") as r:  # streamed, under max_object: kept
            await r.read()
    gw2_hits = counting.hits
    assert gw2_hits == 3


async def test_purge_by_key_and_prefix_and_unsafe_invalidation(gateway, backend, config):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="x", headers={"Cache-Control": "max-age=60"})

    counting = Counting(handler)
    srv = await backend(counting.app)
    gw = await gateway(cache_cfg(config, srv))
    paths = ["/v1/a", "/v1/b", "/v2/c"]
    async with aiohttp.ClientSession() as s:
        for p in paths * 2:
            async with s.get(gw.url + p) as r:
                await r.read()
        assert counting.hits == 3
        purge = gw.admin_url + "/_admin/plugins/cache/purge"
        async with s.post(purge, json={"key": "/v1/a"}, headers=AUTH) as r:
            assert await r.json() == {"purged": 1, "caches": 1}
        # The old path still works (deprecated alias), and says where the endpoint went.
        old = gw.admin_url + "/_admin/cache/purge"
        async with s.post(old, json={"prefix": "/v2/"}, headers=AUTH) as r:
            assert (await r.json())["purged"] == 1
            assert r.headers["Deprecation"] == "true"
            assert "/_admin/plugins/cache/purge" in r.headers["Link"]
        async with s.post(purge, json={"prefix": "/v2/", "route": "other"}, headers=AUTH) as r:
            assert await r.json() == {"purged": 0, "caches": 0}
        async with s.post(purge, json={"prefix": "/v1/"}, headers=VIEWER) as r:
            assert r.status == 403  # purging changes things: operator tokens only
        async with s.post(purge, json={}, headers=AUTH) as r:
            assert r.status == 400
        async with s.post(purge, json={"key": "/v1/a"}) as r:
            assert r.status == 401
        for p in paths:
            async with s.get(gw.url + p) as r:
                await r.read()
        assert counting.hits == 5
        async with s.post(gw.url + "/v1/b", data=b"x") as r:
            assert r.status == 200
        async with s.get(gw.url + "/v1/b") as r:
            assert r.headers["X-Cache"] == "MISS"


@pytest.mark.redis
async def test_redis_cache_is_shared_between_gateways(gateway, backend, config, redis_server):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="shared", headers={"Cache-Control": "max-age=60"})

    counting = Counting(handler)
    srv = await backend(counting.app)
    cfgs = []
    for i in range(2):
        cfg = cache_cfg(config, srv, {"store": "redis"})
        cfg["state"].update({"redis_url": redis_server.url, "dir": cfg["state"]["dir"] + str(i)})
        cfgs.append(cfg)
    gw1, gw2 = await gateway(cfgs[0]), await gateway(cfgs[1])
    host = {"Host": "api.example.com"}  # as behind a load balancer: one name, two gateways
    async with aiohttp.ClientSession() as s:
        async with s.get(gw1.url + "/s", headers=host) as r:
            assert r.headers["X-Cache"] == "MISS"
        async with s.get(gw2.url + "/s", headers=host) as r:
            assert r.headers["X-Cache"] == "HIT" and await r.text() == "shared"
    assert counting.hits == 1
