"""The live request tail: server-side filters, a bounded queue with counted drops, a tap that
exists only while a client is connected; end to end through the real daemon."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from gatewayd.admin.dashboard import tail
from gatewayd.chain import Principal, Request, RequestContext, RouteInfo
from gatewayd.observability.taps import RequestTaps

from .login import backend_app, client, dashboard_config, log_in


def finished(route: str = "api", path: str = "/api/x", ms: float = 5.0) -> RequestContext:
    request = Request("GET", path, "token=secret", CIMultiDict(), "h", "http", "127.0.0.1", None, 0)
    ctx = RequestContext(request, "rid-1", RouteInfo(route, "api", "/api/"))
    ctx.started = time.monotonic() - ms / 1000
    ctx.authenticate(Principal(kind="key", tenant="acme", key_id="k1"), forward_headers=False)
    return ctx


def test_filters_parse_and_match() -> None:
    f = tail.TailFilter.parse({"route": "api", "status": "4xx", "min_ms": "10"})
    assert f.matches("api", 404, 12.0)
    assert not f.matches("api", 404, 9.0)
    assert not f.matches("api", 500, 50.0)
    assert not f.matches("other", 404, 50.0)
    assert tail.TailFilter.parse({}).matches("x", 200, 0.0)
    for bad in ({"status": "6xx"}, {"min_ms": "fast"}, {"min_ms": "-1"}):
        with pytest.raises(ValueError):
            tail.TailFilter.parse(bad)


def test_a_full_queue_drops_and_counts() -> None:
    c = tail.TailClient(tail.TailFilter(), limit=2)
    for _ in range(5):
        c(finished(), 200)
    assert len(c.lines) == 2 and c.dropped == 3
    line = c.lines[0]
    assert line["path"] == "/api/x"  # never the query string
    assert (line["tenant"], line["key_id"], line["status"], line["route"]) == (
        "acme",
        "k1",
        200,
        "api",
    )
    assert line["latency_ms"] >= 5.0


@pytest.fixture
async def tail_app() -> AsyncIterator[tuple[TestClient[Any, Any], RequestTaps]]:
    taps = RequestTaps()

    async def stream(request: web.Request) -> web.StreamResponse:
        return await tail.serve(request, taps, tail.TailFilter.parse(request.query))

    app = web.Application()
    app[tail.TAILS] = tail.TailHub()
    app.router.add_get("/tail", stream)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c, taps


async def read_events(resp: aiohttp.ClientResponse, want: int) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    event = ""
    async with asyncio.timeout(5):
        while len(out) < want:
            line = (await resp.content.readline()).decode().rstrip("\r\n")
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                out.append((event, json.loads(line.split(":", 1)[1])))
    return out


async def test_the_tap_exists_only_while_a_client_is_connected(tail_app: Any) -> None:
    c, taps = tail_app
    assert not taps.active
    resp = await c.get("/tail?status=5xx")
    assert (await read_events(resp, 1))[0][0] == "hello"
    assert taps.active
    taps.emit(finished(path="/api/fine"), 200)  # filtered out on the server
    taps.emit(finished(path="/api/bad"), 502)
    ((kind, line),) = await read_events(resp, 1)
    assert kind == "request" and line["path"] == "/api/bad" and line["status"] == 502
    resp.close()
    for _ in range(40):  # the tail notices within tail.CHECK seconds
        if not taps.active:
            break
        await asyncio.sleep(0.1)
    assert not taps.active
    assert c.app[tail.TAILS].clients == 0


async def test_drops_are_sent_to_the_client(tail_app: Any) -> None:
    c, taps = tail_app
    resp = await c.get("/tail")
    await read_events(resp, 1)
    for i in range(tail.QUEUE + 40):  # faster than the stream can send: one burst
        taps.emit(finished(path=f"/api/{i}"), 200)
    events = await read_events(resp, tail.QUEUE + 1)
    assert [k for k, _ in events].count("request") == tail.QUEUE
    assert events[-1] == ("dropped", {"dropped": 40})
    resp.close()


async def test_the_tail_of_the_real_daemon(gateway: Any, backend: Any, config: Any) -> None:
    server = await backend(backend_app())
    gw = await gateway(dashboard_config(config, server))
    async with client() as s:
        await log_in(s, gw.admin_url)
        url = gw.admin_url + "/dashboard/tail/stream?route=api&status=4xx"
        async with s.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            await read_events(resp, 1)
            async with aiohttp.ClientSession() as plain:
                headers = {"Authorization": "Bearer hush-hush", "X-Secret": "do-not-show"}
                for path in ("/api/ok", "/api/missing?api_key=hush", "/api/broken"):
                    async with plain.get(gw.url + path, headers=headers) as r:
                        await r.read()
            ((kind, line),) = await read_events(resp, 1)
        assert kind == "request"
        assert line["path"] == "/api/missing" and line["status"] == 404
        assert line["method"] == "GET" and line["route"] == "api"
        assert set(line) == {
            "time",
            "method",
            "path",
            "route",
            "status",
            "latency_ms",
            "tenant",
            "key_id",
            "request_id",
        }
        assert "hush" not in json.dumps(line) and "do-not-show" not in json.dumps(line)
        async with s.get(gw.admin_url + "/dashboard/tail/stream?status=9xx") as r:
            assert r.status == 400
