"""The ``unix`` upstream kind against real aiohttp servers on Unix domain sockets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from gatewayd_example.unix import UnixBody, UnixUpstream, UnixUpstreamConfig
from multidict import CIMultiDict
from pydantic import ValidationError

from gatewayd.chain import (
    Attempt,
    Request,
    RequestContext,
    Response,
    RouteInfo,
    TimeoutsConfig,
    UpstreamConnectError,
    UpstreamContext,
    UpstreamError,
    UpstreamKind,
    UpstreamTimeout,
    WebSocketChannel,
)

MiB = 1024 * 1024


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Socket paths must be short (about 100 bytes): pytest's tmp_path can be too long.
    path = Path(tempfile.mkdtemp(prefix="gwu-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def unix_server(sock_dir: Path) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """``await unix_server(app, "a")``: the app served on ``<dir>/a.sock``; its path."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application, name: str) -> str:
        path = str(sock_dir / f"{name}.sock")
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        await web.UnixSite(runner, path).start()
        runners.append(runner)
        return path

    yield start
    for r in runners:
        await r.cleanup()


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[..., Awaitable[UnixUpstream]]]:
    made: list[UnixUpstream] = []

    async def make(targets: list[str], **config: Any) -> UnixUpstream:
        cfg = UnixUpstreamConfig.model_validate({"kind": "unix", "targets": targets, **config})
        ctx = UpstreamContext(None, logging.getLogger("test"), lambda key, factory: factory())
        up = UnixUpstream("app", cfg, ctx)
        await up.start()
        made.append(up)
        return up

    yield make
    for up in made:
        await up.close()


def request_ctx(
    method: str = "GET",
    path: str = "/",
    query: str = "",
    headers: dict[str, str] | None = None,
    body: bytes | AsyncIterator[bytes] | None = None,
) -> RequestContext:
    req = Request(
        method,
        path,
        query,
        CIMultiDict(headers or {}),
        "app.example",
        "http",
        "127.0.0.1",
        body,
        len(body) if isinstance(body, bytes) else None,
    )
    return RequestContext(req, "rid-1", RouteInfo("r", "app", ""))


async def send(
    up: UnixUpstream, target: int = 0, timeouts: TimeoutsConfig | None = None, **kw: Any
) -> tuple[Response, Attempt]:
    t = up.targets()[target]
    attempt = Attempt(t.id)
    ctx = request_ctx(**kw)
    ctx.attempts.append(attempt)
    headers = CIMultiDict(ctx.request.headers)
    resp = await up.send(t, attempt, ctx, ctx.request.path, headers, timeouts or TimeoutsConfig())
    return resp, attempt


async def read_all(body: bytes | AsyncIterator[bytes]) -> bytes:
    if isinstance(body, bytes):
        return body
    return b"".join([c async for c in body])


def named_app(name: str) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        data = await request.read()
        return web.json_response(
            {
                "server": name,
                "method": request.method,
                "path_qs": request.path_qs,
                "x_test": request.headers.get("X-Test"),
                "accept_encoding": request.headers.get("Accept-Encoding"),
                "user_agent": request.headers.get("User-Agent"),
                "body": data.decode(),
            },
            headers={"Connection": "keep-alive, X-Hop", "X-Hop": "1", "X-End": "2"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


# -- config and discovery ----------------------------------------------------------------------


def test_config_wants_absolute_distinct_socket_paths() -> None:
    ok = UnixUpstreamConfig.model_validate({"kind": "unix", "targets": ["/run/a.sock"]})
    assert ok.targets == ["/run/a.sock"] and ok.pool.max_connections == 64
    for bad in (["run/a.sock"], [], ["/a.sock", "/a.sock"], ["/a\x00.sock"]):
        with pytest.raises(ValidationError):
            UnixUpstreamConfig.model_validate({"kind": "unix", "targets": bad})
    with pytest.raises(ValidationError) as exc:
        UnixUpstreamConfig.model_validate({"kind": "unix", "targets": ["/a"], "tragets": 1})
    assert "tragets" in str(exc.value)


def test_registered_as_an_upstream_kind() -> None:
    (ep,) = [e for e in entry_points(group="gatewayd.upstreams") if e.name == "unix"]
    assert ep.load() is UnixUpstream and UnixUpstream.kind == "unix"


async def test_is_an_upstream_kind_with_socket_paths_as_target_ids(upstreams) -> None:
    up = await upstreams(["/tmp/nope-a.sock", "/tmp/nope-b.sock"])
    assert isinstance(up, UpstreamKind)
    assert [t.id for t in up.targets()] == ["/tmp/nope-a.sock", "/tmp/nope-b.sock"]


# -- requests ----------------------------------------------------------------------------------


async def test_each_target_gets_its_requests_as_sent(unix_server, upstreams) -> None:
    a = await unix_server(named_app("a"), "a")
    b = await unix_server(named_app("b"), "b")
    up = await upstreams([a, b])
    for i, name in enumerate(("a", "b")):
        resp, attempt = await send(
            up,
            i,
            method="POST",
            path="/p%20q/x",
            query="k=v&k=w",
            headers={"X-Test": "t"},
            body=b"hello",
        )
        assert resp.status == 200 and attempt.error is None
        got = json.loads(await read_all(resp.body))
        assert got == {
            "server": name,
            "method": "POST",
            "path_qs": "/p%20q/x?k=v&k=w",
            "x_test": "t",
            "accept_encoding": None,  # nothing added on the way
            "user_agent": None,
            "body": "hello",
        }
        # the kind hands the headers over as the target sent them: the core (gatewayd's
        # ManagedUpstream) removes the hop-by-hop ones for every kind alike
        assert resp.headers["X-Hop"] and resp.headers["X-End"] == "2"


async def test_bodies_stream_both_ways(unix_server, upstreams) -> None:
    size = 32 * MiB
    seen: dict[str, Any] = {}

    async def echo(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        n = 0
        async for chunk in request.content.iter_chunked(256 * 1024):
            n += len(chunk)
            await resp.write(chunk)
        seen["n"] = n
        seen["chunked"] = request.headers.get("Transfer-Encoding")
        await resp.write_eof()
        return resp

    app = web.Application(client_max_size=size * 2)
    app.router.add_post("/echo", echo)
    up = await upstreams([await unix_server(app, "s")])
    sent = hashlib.sha256()

    async def produce() -> AsyncIterator[bytes]:
        block = bytes(range(256)) * 4096  # 1 MiB
        for _ in range(size // len(block)):
            sent.update(block)
            yield block

    resp, _ = await send(up, method="POST", path="/echo", body=produce())
    assert isinstance(resp.body, UnixBody)  # streamed, not read whole
    got = hashlib.sha256()
    total = 0
    async for chunk in resp.body:
        assert len(chunk) <= 4 * MiB
        got.update(chunk)
        total += len(chunk)
    assert total == size and got.digest() == sent.digest()
    assert seen == {"n": size, "chunked": "chunked"}


async def test_read_timeout_is_per_chunk(unix_server, upstreams) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for delay in (0.1, 0.1, 0.1, 0.1):  # 0.4 s in all, never 0.25 s between chunks
            await resp.write(b"x" * 100)
            await asyncio.sleep(delay)
        await resp.write(b"stall")
        await asyncio.sleep(5)
        return resp

    app = web.Application()
    app.router.add_get("/", slow)
    up = await upstreams([await unix_server(app, "t")])
    resp, attempt = await send(up, timeouts=TimeoutsConfig(read=0.25))
    chunks = []
    with pytest.raises(UpstreamTimeout):
        async for chunk in resp.body:  # type: ignore[union-attr]
            chunks.append(chunk)
    assert b"".join(chunks).endswith(b"stall") and len(b"".join(chunks)) == 405
    assert attempt.error == "timeout"


async def failed_send(up: UnixUpstream, target: int = 0, **kw: Any) -> tuple[Exception, Attempt]:
    """The error a send raises, and its attempt."""
    t = up.targets()[target]
    attempt = Attempt(t.id)
    ctx = request_ctx(**kw)
    try:
        resp = await up.send(t, attempt, ctx, ctx.request.path, CIMultiDict(), TimeoutsConfig())
        await read_all(resp.body)
    except Exception as exc:
        return exc, attempt
    raise AssertionError("the send did not fail")


async def test_unreachable_sockets_are_connect_errors(sock_dir: Path, upstreams) -> None:
    stale = str(sock_dir / "stale.sock")  # a socket file nobody listens on any more
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()
    up = await upstreams([str(sock_dir / "missing.sock"), stale])
    for i in (0, 1):
        exc, attempt = await failed_send(up, i)
        assert isinstance(exc, UpstreamConnectError) and exc.status == 502
        assert attempt.error == "connect"


async def raw_server(sock_dir: Path, name: str, reply: bytes) -> asyncio.AbstractServer:
    """A backend that reads a request head, writes ``reply`` and hangs up."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(handle, str(sock_dir / f"{name}.sock"))


async def test_a_backend_that_hangs_up_is_a_disconnect(sock_dir: Path, upstreams) -> None:
    servers = [
        await raw_server(sock_dir, "nohead", b""),
        await raw_server(sock_dir, "garbage", b"SPDY/9 what\r\n\r\n"),
        await raw_server(
            sock_dir, "short", b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 70000
        ),
    ]
    try:
        up = await upstreams([str(sock_dir / f"{n}.sock") for n in ("nohead", "garbage", "short")])
        for i in range(3):
            exc, attempt = await failed_send(up, i)
            assert isinstance(exc, UpstreamError) and exc.status == 502, (i, exc)
            assert not isinstance(exc, UpstreamConnectError | UpstreamTimeout)
            assert attempt.error == "disconnect"
    finally:
        for srv in servers:
            srv.close()


async def test_closing_a_body_early_frees_the_pool(unix_server, upstreams) -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(64):
            await resp.write(b"y" * 65536)
        return resp

    app = web.Application()
    app.router.add_get("/", big)
    up = await upstreams([await unix_server(app, "e")], pool={"max_connections": 1})
    for _ in range(3):  # one connection: each request needs the previous one's back
        resp, _ = await send(up, timeouts=TimeoutsConfig(connect=1))
        assert isinstance(resp.body, UnixBody)
        await resp.body.__anext__()
        await resp.body.aclose()


# -- WebSockets --------------------------------------------------------------------------------


async def test_websocket_upgrade_echoes_and_closes(unix_server, upstreams) -> None:
    async def ws_handler(request: web.Request) -> web.StreamResponse:
        if request.headers.get("X-Allow") != "yes":
            return web.Response(status=403)
        ws = web.WebSocketResponse(protocols=("chat",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data + ":" + request.query.get("q", ""))
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    a = await unix_server(app, "wa")
    b = await unix_server(app, "wb")
    up = await upstreams([a, b])
    for t in up.targets():
        ctx = request_ctx(path="/ws", query="q=1")
        attempt = Attempt(t.id)
        headers = CIMultiDict({"X-Allow": "yes"})
        ws = await up.upgrade(t, attempt, ctx, "/ws", headers, TimeoutsConfig(), ["chat"], 1 << 20)
        assert isinstance(ws, WebSocketChannel) and isinstance(
            ws.ws, aiohttp.ClientWebSocketResponse
        )
        assert ws.protocol == "chat"
        await ws.send_str("hi")
        assert (await ws.receive()).data == "echo:hi:1"
        await ws.send_bytes(b"abc")
        assert (await ws.receive()).data == b"cba"
        assert await ws.close(code=1000) is True
        assert ws.close_code == 1000
    # refused upgrade: the backend's status, a clear error
    t = up.targets()[0]
    attempt = Attempt(t.id)
    with pytest.raises(UpstreamError) as exc:
        await up.upgrade(
            t, attempt, request_ctx(path="/ws"), "/ws", CIMultiDict(), TimeoutsConfig(), [], 1024
        )
    assert exc.value.code == "websocket_refused" and attempt.status == 403
    # unreachable socket: a connect error
    gone = await upstreams(["/tmp/gwu-nobody-listens-here.sock"])
    t = gone.targets()[0]
    attempt = Attempt(t.id)
    with pytest.raises(UpstreamConnectError):
        await gone.upgrade(
            t, attempt, request_ctx(path="/ws"), "/ws", CIMultiDict(), TimeoutsConfig(), [], 1024
        )
    assert attempt.error == "connect"


async def test_waiting_for_a_pool_slot_past_connect_is_a_timeout(unix_server, upstreams) -> None:
    release = asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="done")

    app = web.Application()
    app.router.add_get("/", hold)
    up = await upstreams(
        [await unix_server(app, "p")],
        pool={"max_connections": 1},
        timeouts={"connect": "200ms"},
    )
    first = asyncio.ensure_future(send(up, timeouts=TimeoutsConfig(connect=0.2)))
    await asyncio.sleep(0.1)
    t = up.targets()[0]
    attempt = Attempt(t.id)
    ctx = request_ctx()
    with pytest.raises(UpstreamTimeout):
        await up.send(t, attempt, ctx, "/", CIMultiDict(), TimeoutsConfig(connect=0.2))
    assert attempt.error == "timeout"
    release.set()
    resp, _ = await first
    assert await read_all(resp.body) == b"done"
