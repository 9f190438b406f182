"""``gatewayd.testing.upstream_context`` and the daemon's HTTP client a kind gets from it."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web
from multidict import CIMultiDict

from gatewayd.chain import (
    Attempt,
    PoolConfig,
    Request,
    RequestContext,
    RouteInfo,
    TimeoutsConfig,
    UpstreamConnectError,
    UpstreamContext,
    UpstreamTimeout,
)
from gatewayd.testing import upstream_context

BIG = b"x" * (256 * 1024)


def request_ctx() -> RequestContext:
    req = Request("POST", "/", "", CIMultiDict(), "gw", "http", "127.0.0.1", None, None)
    return RequestContext(req, "rid-http-client", RouteInfo("r", None, ""))


async def test_a_kind_sends_through_the_daemons_client(backend) -> None:
    seen: list[tuple[str, str, bytes, str | None]] = []

    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append((request.method, request.path_qs, body, request.headers.get("X-Kind")))
        if request.path == "/big":  # no Content-Length: chunked
            resp = web.StreamResponse()
            await resp.prepare(request)
            for i in range(0, len(BIG), 65536):
                await resp.write(BIG[i : i + 65536])
            await resp.write_eof()
            return resp
        return web.json_response({"ok": True, "len": len(body)})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    srv = await backend(app)
    client = upstream_context("kind").http_client(PoolConfig(max_connections=4))
    origin = f"http://127.0.0.1:{srv.port}"
    try:
        attempt = Attempt(origin)
        headers = CIMultiDict({"X-Kind": "yes", "Content-Type": "application/json"})
        small = await client.request(
            request_ctx(), attempt, "POST", origin, "/v1/x?a=1", headers, b"{}", TimeoutsConfig()
        )
        assert small.status == 200 and small.body == b'{"ok": true, "len": 2}'
        assert seen[-1] == ("POST", "/v1/x?a=1", b"{}", "yes")
        big = await client.request(
            request_ctx(), Attempt(origin), "GET", origin, "/big", CIMultiDict(), None,
            TimeoutsConfig(),
        )  # fmt: skip
        assert not isinstance(big.body, bytes)  # chunked: streamed, chunk by chunk
        assert b"".join([c async for c in big.body]) == BIG
    finally:
        await client.close()


async def test_errors_are_the_upstream_errors_a_kind_raises(backend) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: 1\n\n")
        await never.wait()
        return resp

    never = asyncio.Event()
    app = web.Application()
    app.router.add_get("/slow", slow)
    srv = await backend(app)
    client = upstream_context().http_client()
    try:
        refused = Attempt("x")
        with pytest.raises(UpstreamConnectError):
            await client.request(
                request_ctx(), refused, "GET", "http://127.0.0.1:9", "/", CIMultiDict(), None,
                TimeoutsConfig(),
            )  # fmt: skip
        assert refused.error == "connect"
        origin = f"http://127.0.0.1:{srv.port}"
        stalled = Attempt(origin)
        reply = await client.request(
            request_ctx(), stalled, "GET", origin, "/slow", CIMultiDict(), None,
            TimeoutsConfig(read=0.2),
        )  # fmt: skip
        assert not isinstance(reply.body, bytes)
        assert await reply.body.__anext__() == b"data: 1\n\n"
        with pytest.raises(UpstreamTimeout):
            await reply.body.__anext__()
        assert stalled.error == "timeout"
    finally:
        await client.close()


def test_a_context_without_a_client_says_so() -> None:
    context = UpstreamContext(None, logging.getLogger("t"), lambda key, factory: factory())  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="no HTTP client"):
        context.http_client()
