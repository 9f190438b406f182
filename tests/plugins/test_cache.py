"""``cache`` (gatewayd/plugins/cache/): config, then requests."""

from __future__ import annotations

import asyncio

import pytest

from gatewayd.chain import RequestContext, Response, UpstreamConnectError, UpstreamTimeout
from gatewayd.plugins.cache import CachePlugin
from gatewayd.testing import ConfigError, PluginHarness

# -- config ------------------------------------------------------------------------------------


def test_the_contract_spelling_is_valid():
    config = {"default_ttl": "60s", "max_object": "1MiB", "max_bytes": "256MiB"}
    h = PluginHarness(CachePlugin, config)
    cfg = h.plugin.config
    assert (cfg.default_ttl, cfg.max_object, cfg.max_bytes) == (60.0, 1 << 20, 256 << 20)


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"default_ttl": "a while"}, "plugins[0].cache.default_ttl"),
        ({"max_object": "big"}, "plugins[0].cache.max_object"),
        ({"store": "disk"}, "plugins[0].cache.store"),
        ({"max_revalidations": 0}, "plugins[0].cache.max_revalidations"),
        ({"ttl": "60s"}, "plugins[0].cache.ttl"),
        ({"use_stale": ["updating"]}, "plugins[0].cache.use_stale[0]"),
        ({"use_stale_max": "forever"}, "plugins[0].cache.use_stale_max"),
        ({"targeted_fields": ["CDN Cache Control"]}, "plugins[0].cache.targeted_fields[0]"),
        ({"strip_targeted": ["X:Y"]}, "plugins[0].cache.strip_targeted[0]"),
    ],
)
def test_invalid_configs_name_the_field(config, path):
    with pytest.raises(ConfigError) as err:
        PluginHarness(CachePlugin, config)
    assert [p.path for p in err.value.problems] == [path]


# -- requests ----------------------------------------------------------------------------------


class Backend:
    """Counts calls; answers with ``headers``, ``status`` and a body naming the call."""

    def __init__(self, headers: dict[str, str] | None = None, status: int = 200) -> None:
        self.headers = headers if headers is not None else {"Cache-Control": "max-age=60"}
        self.status = status
        self.calls = 0
        self.delay = 0.0
        self.stream = False

    async def __call__(self, ctx: RequestContext) -> Response:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status == 304:
            return Response(304, dict(self.headers), b"")
        body = f"call {self.calls}".encode()
        if self.stream:

            async def chunks():
                yield body[:3]
                yield body[3:]

            return Response(self.status, dict(self.headers), chunks())
        return Response(self.status, dict(self.headers), body)


def count(h: PluginHarness, result: str) -> float | None:
    return h.sample("gatewayd_cache_total", route="test", result=result)


async def test_a_miss_is_stored_and_the_next_request_is_a_hit():
    backend = Backend()
    async with PluginHarness(CachePlugin, upstream=backend) as h:
        first = await h.request("GET", "/a")
        assert first.headers["X-Cache"] == "MISS" and first.body == b"call 1"
        second = await h.request("GET", "/a")
        assert second.headers["X-Cache"] == "HIT" and second.body == b"call 1"
        assert "Age" in second.headers
        assert backend.calls == 1
        other = await h.request("GET", "/a", query_string="page=2")
        assert other.headers["X-Cache"] == "MISS"
        assert (count(h, "HIT"), count(h, "MISS")) == (1, 2)


async def test_a_streamed_body_is_teed_into_the_cache():
    backend = Backend()
    backend.stream = True
    async with PluginHarness(CachePlugin, upstream=backend) as h:
        assert (await h.request("GET", "/s")).body == b"call 1"
        hit = await h.request("GET", "/s")
        assert hit.headers["X-Cache"] == "HIT" and hit.body == b"call 1"


async def test_objects_over_max_object_pass_through_unstored():
    backend = Backend()
    backend.stream = True
    async with PluginHarness(CachePlugin, {"max_object": 4}, upstream=backend) as h:
        assert (await h.request("GET", "/big")).body == b"call 1"
        assert (await h.request("GET", "/big")).body == b"call 2"


async def test_default_ttl_only_for_responses_that_say_nothing():
    async with PluginHarness(CachePlugin, upstream=Backend({})) as h:
        await h.request()
        assert (await h.request()).headers["X-Cache"] == "MISS"  # nothing says how long
    async with PluginHarness(CachePlugin, {"default_ttl": "60s"}, upstream=Backend({})) as h:
        await h.request()
        assert (await h.request()).headers["X-Cache"] == "HIT"


@pytest.mark.parametrize(
    "headers",
    [{"Cache-Control": "private, max-age=60"}, {"Cache-Control": "no-store"}, {"Vary": "*"}],
)
async def test_what_a_shared_cache_must_not_store_is_not_stored(headers):
    backend = Backend({"Cache-Control": "max-age=60", **headers})
    async with PluginHarness(CachePlugin, upstream=backend) as h:
        await h.request()
        await h.request()
        assert backend.calls == 2


async def test_requests_with_credentials_are_not_shared():
    backend = Backend()
    async with PluginHarness(CachePlugin, upstream=backend) as h:
        await h.request(headers={"Authorization": "Bearer a"})
        await h.request(headers={"Authorization": "Bearer b"})
        assert backend.calls == 2


async def test_no_store_requests_bypass_the_cache():
    backend = Backend()
    async with PluginHarness(CachePlugin, upstream=backend) as h:
        await h.request()
        reply = await h.request(headers={"Cache-Control": "no-store"})
        assert reply.headers["X-Cache"] == "BYPASS" and backend.calls == 2
        assert count(h, "BYPASS") == 1


async def test_a_successful_unsafe_method_invalidates_the_path():
    backend = Backend()
    async with PluginHarness(CachePlugin, upstream=backend) as h:
        await h.request("GET", "/item")
        assert (await h.request("GET", "/item")).headers["X-Cache"] == "HIT"
        await h.request("POST", "/item", body=b"{}")
        assert (await h.request("GET", "/item")).headers["X-Cache"] == "MISS"


async def test_a_stale_entry_is_revalidated_with_its_validators():
    backend = Backend({"Cache-Control": "no-cache", "ETag": '"v1"'})
    async with PluginHarness(CachePlugin, upstream=backend) as h:
        assert (await h.request()).body == b"call 1"
        backend.status = 304
        reply = await h.request()
        assert reply.status == 200 and reply.body == b"call 1"
        assert reply.headers["X-Cache"] == "HIT"
        assert h.upstream_requests[-1].headers["If-None-Match"] == '"v1"'


async def test_a_client_revalidation_gets_a_304_from_the_cache():
    backend = Backend({"Cache-Control": "max-age=60", "ETag": '"v1"'})
    async with PluginHarness(CachePlugin, upstream=backend) as h:
        await h.request()
        reply = await h.request(headers={"If-None-Match": '"v1"'})
        assert reply.status == 304 and reply.body == b"" and backend.calls == 1


async def test_stale_if_error_serves_the_old_copy_when_the_backend_fails():
    backend = Backend({"Cache-Control": "no-cache, stale-if-error=60", "ETag": '"v1"'})
    async with PluginHarness(CachePlugin, upstream=backend) as h:
        await h.request()
        backend.status = 503
        reply = await h.request()
        assert reply.status == 200 and reply.body == b"call 1"
        assert reply.headers["X-Cache"] == "STALE"


async def test_only_if_cached_answers_504_on_a_miss():
    async with PluginHarness(CachePlugin, upstream=Backend()) as h:
        reply = await h.request(headers={"Cache-Control": "only-if-cached"})
        assert reply.status == 504 and h.upstream_requests == []


async def test_concurrent_misses_go_to_the_backend_once():
    backend = Backend()
    backend.delay = 0.1
    async with PluginHarness(CachePlugin, upstream=backend) as h:
        replies = await asyncio.gather(*(h.request("GET", "/hot") for _ in range(5)))
        assert backend.calls == 1
        assert all(r.body == b"call 1" for r in replies)
        assert sorted(r.headers["X-Cache"] for r in replies) == ["HIT"] * 4 + ["MISS"]


async def test_the_cache_survives_a_reload_with_the_same_config():
    backend = Backend()
    h = PluginHarness(CachePlugin, {"default_ttl": "1m"}, upstream=backend)
    await h.request()
    assert (await h.reload().request()).headers["X-Cache"] == "HIT"
    assert (await h.reload({"default_ttl": "2m"}).request()).headers["X-Cache"] == "MISS"
    await h.close()


async def test_stale_while_revalidate_serves_stale_and_refreshes_in_the_background():
    backend = Backend({"Cache-Control": "max-age=0, stale-while-revalidate=60", "ETag": '"v1"'})
    async with PluginHarness(CachePlugin, upstream=backend) as h:
        assert (await h.request("GET", "/swr")).body == b"call 1"
        stale = await h.request("GET", "/swr")
        assert stale.headers["X-Cache"] == "STALE" and stale.body == b"call 1"
        for _ in range(100):  # the revalidation runs in the background
            if backend.calls == 2 and not getattr(h.plugin.shared, "revalidating", ()):
                break
            await asyncio.sleep(0.01)
        assert backend.calls == 2
        assert h.upstream_requests[-1].headers["If-None-Match"] == '"v1"'
        refreshed = await h.request("GET", "/swr")
        assert refreshed.headers["X-Cache"] == "STALE" and refreshed.body == b"call 2"


@pytest.mark.parametrize("method", ["BREW", "M-SEARCH", "PROPFIND", "LOCK"])
async def test_any_unsafe_method_invalidates_even_one_no_parser_knows(method):
    """RFC 9111 4.4: unsafe is anything but GET, HEAD, OPTIONS and TRACE (the daemon's listener
    refuses methods its parser does not know; the plugin does not rely on that)."""
    backend = Backend()
    async with PluginHarness(CachePlugin, upstream=backend) as h:
        await h.request("GET", "/item")
        await h.request("OPTIONS", "/item")
        assert (await h.request("GET", "/item")).headers["X-Cache"] == "HIT"
        await h.request(method, "/item")
        assert (await h.request("GET", "/item")).headers["X-Cache"] == "MISS"


async def test_an_upstream_error_is_replaced_by_the_stale_copy():
    """The harness's backend raising UpstreamConnectError / UpstreamTimeout is the gateway's
    own 502 / 504: with the defaults (use_stale: [error, timeout]) the stale copy answers."""
    state = {"fail": None}

    async def upstream(ctx: RequestContext) -> Response:
        if state["fail"] is not None:
            raise state["fail"]("gone")
        return Response(200, {"Cache-Control": "max-age=0"}, b"good")

    async with PluginHarness(CachePlugin, upstream=upstream) as h:
        assert (await h.request()).body == b"good"
        for error in (UpstreamConnectError, UpstreamTimeout):
            state["fail"] = error
            reply = await h.request()
            assert (reply.status, reply.body, reply.headers["X-Cache"]) == (200, b"good", "STALE")
    async with PluginHarness(CachePlugin, {"use_stale": []}, upstream=upstream) as h:
        state["fail"] = None
        await h.request()
        state["fail"] = UpstreamConnectError
        assert (await h.request()).status == 502
