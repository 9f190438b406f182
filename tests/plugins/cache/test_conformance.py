"""The cache against RFC 9110/9111/9213/5861, through the real daemon and a real aiohttp backend
on 127.0.0.1 sending the exact header lines that showed each problem (issue 11, items 7-15).
Repeated field lines are added one by one (``resp.headers.add``), so they reach the gateway as
separate lines, as an origin sends them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support import upstream_url

Lines = list[tuple[str, str]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Origin:
    """An aiohttp app that answers every path with ``handler`` and counts what reaches it."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.calls: list[str] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path != "/healthz":
            self.calls.append(f"{request.method} {request.path_qs}")
        return await self.handler(request)

    def count(self, path: str) -> int:
        return sum(1 for c in self.calls if c.split(" ", 1)[1] == path)


def reply(lines: Lines, body: str = "body", status: int = 200) -> web.Response:
    resp = web.Response(text=body, status=status)
    for name, value in lines:
        resp.headers.add(name, value)
    return resp


async def start(
    gateway: Any,
    backend: Any,
    config: Any,
    handler: Handler,
    plugin: dict[str, Any] | None = None,
    **upstream: Any,
) -> tuple[Any, Origin]:
    origin = Origin(handler)
    srv = await backend(origin.app)
    cfg = config(
        upstreams={"api": {"targets": [upstream_url(srv)], **upstream}},
        routes=[{"name": "api", "match": {"path": "/"}, "upstream": "api",
                 "plugins": [{"cache": plugin or {}}]}],
    )  # fmt: skip
    return await gateway(cfg), origin


async def get(
    s: aiohttp.ClientSession, url: str, method: str = "GET", **kw: Any
) -> tuple[int, Any, bytes]:
    async with s.request(method, url, **kw) as r:
        return r.status, r.headers, await r.read()


# -- 7: Cache-Control over several lines -----------------------------------------------------------


async def test_7_cache_control_lines_are_one_list(gateway, backend, config):
    """max-age=3600 on one line, s-maxage=1 on the next: a shared cache uses s-maxage, so the
    copy is stale after a second (it was served for an hour when only the first line was read)."""

    async def handler(request: web.Request) -> web.Response:
        return reply([("Cache-Control", "max-age=3600"), ("Cache-Control", "s-maxage=1")])

    gw, origin = await start(gateway, backend, config, handler)
    async with aiohttp.ClientSession() as s:
        await get(s, gw.url + "/cc")
        _, headers, _ = await get(s, gw.url + "/cc")
        assert headers["X-Cache"] == "HIT"
        await asyncio.sleep(1.3)
        _, headers, _ = await get(s, gw.url + "/cc")
        assert headers["X-Cache"] == "MISS"
    assert origin.count("/cc") == 2


# -- 8: Expires is a strict HTTP-date ------------------------------------------------------------

FUTURE_YEAR = time.gmtime().tm_year + 40
YY = (time.gmtime().tm_year + 45) % 100  # rfc850: 45 years ahead is the future, not the past
EXPIRES: dict[str, tuple[list[str], bool]] = {
    # path: (Expires lines, fresh?)
    "/imf": ([f"Thu, 01 Dec {FUTURE_YEAR} 16:00:00 GMT"], True),
    "/rfc850": ([f"Thursday, 01-Dec-{YY:02d} 16:00:00 GMT"], True),
    "/asctime": ([f"Thu Dec  1 16:00:00 {FUTURE_YEAR}"], True),
    "/dots": ([f"Thu, 01 Dec {FUTURE_YEAR} 16.00.00 GMT"], False),
    "/one-digit-hour": ([f"Thu, 01 Dec {FUTURE_YEAR} 6:00:00 GMT"], False),
    "/two-digit-year": ([f"Thu, 01 Dec {FUTURE_YEAR % 100:02d} 16:00:00 GMT"], False),
    "/no-comma": ([f"Thu 01 Dec {FUTURE_YEAR} 16:00:00 GMT"], False),
    "/extra-space": ([f"Thu,  01 Dec {FUTURE_YEAR} 16:00:00 GMT"], False),
    "/dashes": ([f"Thu, 01-Dec-{FUTURE_YEAR} 16:00:00 GMT"], False),
    "/utc": ([f"Thu, 01 Dec {FUTURE_YEAR} 16:00:00 UTC"], False),
    "/aest": ([f"Thu, 01 Dec {FUTURE_YEAR} 16:00:00 AEST"], False),
    "/zero": (["0"], False),
    "/first-invalid": (["0", f"Thu, 01 Dec {FUTURE_YEAR} 16:00:00 GMT"], False),
    "/first-valid": ([f"Thu, 01 Dec {FUTURE_YEAR} 16:00:00 GMT", "0"], True),
}


async def test_8_expires_must_be_a_valid_http_date(gateway, backend, config):
    """An invalid Expires means already expired: the second request goes to the origin. The
    obsolete rfc850 and asctime forms are dates; of two Expires lines the first counts."""

    async def handler(request: web.Request) -> web.Response:
        return reply([("Expires", v) for v in EXPIRES[request.path][0]])

    gw, origin = await start(gateway, backend, config, handler)
    async with aiohttp.ClientSession() as s:
        for path in EXPIRES:
            await get(s, gw.url + path)
            await get(s, gw.url + path)
    got = {path: origin.count(path) == 1 for path in EXPIRES}
    assert got == {path: fresh for path, (_, fresh) in EXPIRES.items()}


# -- 9: Age is a list: the first member counts -------------------------------------------------

AGES: dict[str, tuple[list[str], bool]] = {
    "/list": (["7200, 0"], False),
    "/lines": (["7200", "0"], False),
    "/valid": (["10"], True),
    "/garbage": (["soon"], True),  # ignored: the age comes from Date and the clock
    "/negative": (["-7200"], True),
}


async def test_9_age_first_member_counts(gateway, backend, config):
    """``Age: 7200, 0`` with max-age=3600 is stale on arrival (it was read as 0 and served
    fresh); an Age that is not a non-negative integer is ignored (RFC 9111 5.1)."""

    async def handler(request: web.Request) -> web.Response:
        lines = [("Cache-Control", "max-age=3600")]
        return reply(lines + [("Age", v) for v in AGES[request.path][0]])

    gw, origin = await start(gateway, backend, config, handler)
    async with aiohttp.ClientSession() as s:
        for path in AGES:
            await get(s, gw.url + path)
            _, headers, _ = await get(s, gw.url + path)
            if path == "/valid":
                assert 10 <= int(headers["Age"]) < 12
    got = {path: origin.count(path) == 1 for path in AGES}
    assert got == {path: fresh for path, (_, fresh) in AGES.items()}


# -- 10: Vary over several lines ------------------------------------------------------------------


async def test_10_vary_lines_are_one_list(gateway, backend, config):
    """An empty Vary line then ``Vary: *``: never storable (only the empty first line was
    read). ``Vary: Accept-Language`` and ``Vary: X-Tenant`` on two lines: both select."""

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/star":
            return reply([("Cache-Control", "max-age=60"), ("Vary", ""), ("Vary", "*")])
        tenant = request.headers.get("X-Tenant", "-")
        lines = [("Cache-Control", "max-age=60"), ("Vary", "Accept-Language"), ("Vary", "X-Tenant")]
        return reply(lines, body=tenant)

    gw, origin = await start(gateway, backend, config, handler)
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            _, headers, _ = await get(s, gw.url + "/star")
        assert headers["X-Cache"] == "MISS"
        a = {"Accept-Language": "en", "X-Tenant": "a"}
        b = {"Accept-Language": "en", "X-Tenant": "b"}
        assert (await get(s, gw.url + "/two", headers=a))[2] == b"a"
        assert (await get(s, gw.url + "/two", headers=b))[2] == b"b"
        _, headers, body = await get(s, gw.url + "/two", headers=a)
        assert headers["X-Cache"] == "HIT" and body == b"a"
    assert origin.count("/star") == 2 and origin.count("/two") == 2


# -- 11: every unsafe method invalidates -----------------------------------------------------


async def test_11_unsafe_methods_invalidate_target_location_and_content_location(
    gateway, backend, config
):
    """M-SEARCH, PROPFIND and MKCOL answered 2xx drop the target's entries (a method the
    listener's parser does not know never reaches the chain: it answers 400 bad_method); a
    POST answered 201 drops its Location and Content-Location on the same host, not another
    host's."""
    ports: dict[str, str] = {}

    async def handler(request: web.Request) -> web.Response:
        if request.method == "GET":
            return reply([("Cache-Control", "max-age=600")], body=request.path)
        if request.path == "/items":
            where = request.headers.get("X-Where", "here")
            host = ports["host"] if where == "here" else "other.example"
            return reply(
                [("Location", "/items/7" if where == "here" else f"http://{host}/items/7"),
                 ("Content-Location", f"http://{host}/items/8")],
                status=201,
            )  # fmt: skip
        return reply([], status=207 if request.method == "PROPFIND" else 200)

    gw, _ = await start(gateway, backend, config, handler)
    ports["host"] = gw.url.split("://", 1)[1]
    paths = ["/a", "/b", "/c", "/items/7", "/items/8", "/items/9"]
    async with aiohttp.ClientSession() as s:

        async def cached() -> dict[str, str]:
            return {p: (await get(s, gw.url + p))[1]["X-Cache"] for p in paths}

        await cached()
        assert set((await cached()).values()) == {"HIT"}
        await get(s, gw.url + "/items", "POST", headers={"X-Where": "elsewhere"}, data=b"x")
        assert set((await cached()).values()) == {"HIT"}  # another host's URIs: kept
        for method, path in [("M-SEARCH", "/a"), ("PROPFIND", "/b"), ("MKCOL", "/c")]:
            r = await get(s, gw.url + path, method)
            assert r[0] in (200, 207), r
        assert (await get(s, gw.url + "/items", "POST", data=b"x"))[0] == 201
        after = await cached()
    assert after == {
        "/a": "MISS",
        "/b": "MISS",
        "/c": "MISS",
        "/items/7": "MISS",  # Location
        "/items/8": "MISS",  # Content-Location, absolute, same host
        "/items/9": "HIT",
    }


async def test_11_an_unsafe_method_with_an_error_answer_keeps_the_entry(gateway, backend, config):
    async def handler(request: web.Request) -> web.Response:
        if request.method == "GET":
            return reply([("Cache-Control", "max-age=600")])
        return reply([], status=500 if request.method == "PROPFIND" else 404)

    gw, origin = await start(gateway, backend, config, handler)
    async with aiohttp.ClientSession() as s:
        await get(s, gw.url + "/x")
        for method in ("PROPFIND", "DELETE", "M-SEARCH"):
            await get(s, gw.url + "/x", method)
        _, headers, _ = await get(s, gw.url + "/x")
    assert headers["X-Cache"] == "HIT"
    assert origin.count("/x") == 4  # one GET and three unsafe requests


# -- 12: targeted fields (RFC 9213) ---------------------------------------------------------------

TARGETED: dict[str, tuple[Lines, bool]] = {
    # path: (response lines, stored and served?)
    "/cdn-wins": ([("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=60")], True),
    "/cdn-no-store": ([("Cache-Control", "max-age=60"), ("CDN-Cache-Control", "no-store")], False),
    "/cdn-private": ([("Cache-Control", "private"), ("CDN-Cache-Control", "max-age=60")], True),
    "/own-first": (
        [("CDN-Cache-Control", "no-store"), ("Gatewayd-Cache-Control", "max-age=60")],
        True,
    ),
    # not a valid Dictionary (a trailing comma, an unterminated string): ignored, so the
    # Cache-Control line decides
    "/invalid-cdn": ([("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=60,")], False),
    "/invalid-cdn-2": ([("Cache-Control", "max-age=60"), ("CDN-Cache-Control", 'a="x')], True),
    "/expires-ignored": (
        [("CDN-Cache-Control", "max-age=60"), ("Expires", "Thu, 01 Jan 1970 00:00:00 GMT")],
        True,
    ),
}


async def test_12_targeted_fields_take_precedence(gateway, backend, config):
    """CDN-Cache-Control (and our own Gatewayd-Cache-Control before it) is this cache's policy;
    Cache-Control and Expires are then ignored. Gatewayd-Cache-Control is not forwarded to
    the client; CDN-Cache-Control is (a CDN in front of the gateway obeys it too)."""

    async def handler(request: web.Request) -> web.Response:
        return reply(TARGETED[request.path][0])

    gw, origin = await start(gateway, backend, config, handler)
    async with aiohttp.ClientSession() as s:
        for path in TARGETED:
            for _ in range(2):
                _, headers, _ = await get(s, gw.url + path)
                assert "Gatewayd-Cache-Control" not in headers
            if path == "/own-first":
                assert headers["CDN-Cache-Control"] == "no-store"
    got = {path: origin.count(path) == 1 for path in TARGETED}
    assert got == {path: stored for path, (_, stored) in TARGETED.items()}


async def test_12_targeted_fields_are_configurable_and_the_cdn_field_may_be_stripped(
    gateway, backend, config
):
    """``targeted_fields: [Edge-Control]``: only that field targets this cache (the CDN's is
    an ordinary header then); ``strip_targeted`` lists what the client does not get."""

    async def handler(request: web.Request) -> web.Response:
        lines = [("CDN-Cache-Control", "no-store"), ("Cache-Control", "no-store")]
        if request.path == "/edge":
            lines.append(("Edge-Control", "max-age=60"))
        return reply(lines)

    plugin = {"targeted_fields": ["Edge-Control"], "strip_targeted": ["Edge-Control"]}
    gw, origin = await start(gateway, backend, config, handler, plugin)
    async with aiohttp.ClientSession() as s:
        for path in ("/edge", "/plain"):
            for _ in range(2):
                _, headers, _ = await get(s, gw.url + path)
                assert "Edge-Control" not in headers and headers["CDN-Cache-Control"] == "no-store"
    assert origin.count("/edge") == 1 and origin.count("/plain") == 2


# -- 13: any final status with explicit freshness -----------------------------------------------

MUST_UNDERSTAND = "must-understand, no-store, max-age=60"
STATUSES: dict[str, tuple[int, Lines, bool]] = {
    "/400": (400, [("Cache-Control", "max-age=60")], True),
    "/404": (404, [("Cache-Control", "max-age=60")], True),
    "/500": (500, [("Cache-Control", "max-age=60")], True),
    "/599": (599, [("Cache-Control", "max-age=60")], True),
    "/500-expires": (500, [("Expires", "Thu, 01 Dec 2094 16:00:00 GMT")], True),
    "/500-heuristic": (500, [], False),  # not heuristically cacheable: default_ttl does not apply
    "/404-heuristic": (404, [], True),  # heuristically cacheable: default_ttl applies
    "/206": (206, [("Cache-Control", "max-age=60"), ("Content-Range", "bytes 0-3/10")], False),
    "/must-understand": (200, [("Cache-Control", MUST_UNDERSTAND)], True),
    "/must-understand-599": (599, [("Cache-Control", MUST_UNDERSTAND)], False),
}  # fmt: skip


async def test_13_any_final_status_with_explicit_freshness_is_stored(gateway, backend, config):
    """A 400, 404, 500 or 599 with max-age (or Expires) is stored and reused; without explicit
    freshness only heuristically cacheable statuses get default_ttl; a 206 is never stored;
    must-understand overrides no-store for a status this cache understands (RFC 9111 3,
    5.2.2.3)."""

    async def handler(request: web.Request) -> web.Response:
        status, lines, _ = STATUSES[request.path]
        return reply(lines, body=str(status), status=status)

    gw, origin = await start(gateway, backend, config, handler, {"default_ttl": "60s"})
    async with aiohttp.ClientSession() as s:
        for path, (status, _, _) in STATUSES.items():
            for _ in range(2):
                got = await get(s, gw.url + path)
                assert got[0] == status and got[2] == str(status).encode()
    got_stored = {path: origin.count(path) == 1 for path in STATUSES}
    assert got_stored == {path: stored for path, (_, _, stored) in STATUSES.items()}


# -- 14: a stale copy instead of the gateway's 502/504 ------------------------------------------


class Failing:
    """Answers ``lines`` until ``fail`` is set, then fails as ``mode`` says: ``close`` (the
    connection is closed without an answer), ``slow`` (past the read timeout) or a status."""

    def __init__(self, lines: Lines) -> None:
        self.lines = lines
        self.fail: str | int | None = None

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        if self.fail is None:
            return reply(self.lines, body="good")
        if self.fail == "close":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if self.fail == "slow":
            await asyncio.sleep(3)
            return reply(self.lines, body="late")
        return reply([], status=int(self.fail), body="origin error")


@pytest.mark.parametrize(
    ("lines", "mode", "plugin", "served"),
    [
        # no directive forbids it: default use_stale [error, timeout]
        ([("Cache-Control", "max-age=1")], "close", {}, "STALE"),
        ([("Cache-Control", "max-age=1")], "slow", {}, "STALE"),
        ([("Cache-Control", "max-age=1")], 503, {}, 503),  # an origin 503: not by default
        ([("Cache-Control", "max-age=1")], 503, {"use_stale": ["http_503"]}, "STALE"),
        ([("Cache-Control", "max-age=1")], "close", {"use_stale": []}, 502),
        # directives that forbid serving stale
        ([("Cache-Control", "max-age=1, must-revalidate")], "close", {}, 502),
        ([("Cache-Control", "max-age=1"), ("Cache-Control", "proxy-revalidate")], "close", {}, 502),
        ([("Cache-Control", "s-maxage=1")], "close", {}, 502),
        # ... unless stale-if-error allows it, for any error (RFC 5861)
        ([("Cache-Control", "max-age=1, must-revalidate, stale-if-error=9")], "close", {}, "STALE"),
        ([("Cache-Control", "max-age=1, stale-if-error=60")], 500, {}, "STALE"),
        # the bound: use_stale_max (default one day) and the stale-if-error window
        ([("Cache-Control", "max-age=1")], "close", {"use_stale_max": "500ms"}, 502),
        ([("Cache-Control", "max-age=1, stale-if-error=0")], "close", {}, 502),  # its own bound
    ],
)  # fmt: skip
async def test_14_stale_copy_when_the_origin_gives_no_answer(
    gateway, backend, config, lines, mode, plugin, served
):
    origin_handler = Failing(lines)
    upstream = {"timeouts": {"read": "300ms"}, "retries": {"attempts": 0}}
    gw, _ = await start(gateway, backend, config, origin_handler, plugin, **upstream)
    async with aiohttp.ClientSession() as s:
        assert (await get(s, gw.url + "/page"))[2] == b"good"
        await asyncio.sleep(1.6)  # stale now
        origin_handler.fail = mode
        status, headers, body = await get(s, gw.url + "/page")
    if served == "STALE":
        assert (status, headers["X-Cache"], body) == (200, "STALE", b"good")
        assert int(headers["Age"]) >= 1
    else:
        assert status == served and body != b"good"


# -- 15: byte ranges from a stored full response ----------------------------------------------

BODY = b"0123456789"


async def test_15_ranges_are_served_from_the_stored_200(gateway, backend, config):
    last_modified = "Sun, 06 Nov 1994 08:49:37 GMT"

    async def handler(request: web.Request) -> web.Response:
        resp = web.Response(body=BODY, content_type="application/octet-stream")
        resp.headers["Cache-Control"] = "max-age=600"
        resp.headers["ETag"] = '"v1"'
        resp.headers["Last-Modified"] = last_modified
        return resp

    gw, origin = await start(gateway, backend, config, handler)
    cases: list[tuple[dict[str, str], int, bytes, str | None]] = [
        ({"Range": "bytes=2-5"}, 206, b"2345", "bytes 2-5/10"),
        ({"Range": "bytes=7-"}, 206, b"789", "bytes 7-9/10"),
        ({"Range": "bytes=-3"}, 206, b"789", "bytes 7-9/10"),
        ({"Range": "bytes=-30"}, 206, BODY, "bytes 0-9/10"),
        ({"Range": "bytes=8-100"}, 206, b"89", "bytes 8-9/10"),
        ({"Range": "bytes=20-"}, 416, b"", "bytes */10"),
        ({"Range": "bytes=-0"}, 416, b"", "bytes */10"),
        ({"Range": "bytes=0-1,4-5"}, 200, BODY, None),  # several ranges: the whole 200
        ({"Range": "bytes=5-2"}, 200, BODY, None),  # invalid: ignored
        ({"Range": "items=0-1"}, 200, BODY, None),  # another unit: ignored
        ({"Range": "bytes=2-5", "If-Range": '"v1"'}, 206, b"2345", "bytes 2-5/10"),
        ({"Range": "bytes=2-5", "If-Range": 'W/"v1"'}, 200, BODY, None),  # weak: no match
        ({"Range": "bytes=2-5", "If-Range": '"v2"'}, 200, BODY, None),
        ({"Range": "bytes=2-5", "If-Range": last_modified}, 206, b"2345", "bytes 2-5/10"),
        ({"Range": "bytes=2-5", "If-Range": "Sun, 06 Nov 1994 08:49:38 GMT"}, 200, BODY, None),
    ]
    async with aiohttp.ClientSession() as s:
        assert (await get(s, gw.url + "/r"))[2] == BODY
        for request_headers, status, body, content_range in cases:
            got_status, headers, got_body = await get(s, gw.url + "/r", headers=request_headers)
            assert got_status == status, request_headers
            assert headers["X-Cache"] == "HIT"
            assert headers.get("Content-Range") == content_range, request_headers
            if status != 416:
                assert got_body == body and int(headers["Content-Length"]) == len(body)
    assert origin.count("/r") == 1
