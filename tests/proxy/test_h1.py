"""gatewayd.proxy.h1, the forwarder's HTTP/1.1 client, against raw sockets: how responses are
framed and read, the limits, which connections are kept, the pool's slots and idle timeout,
flow control both ways, cancellation, TLS. (What goes on the wire, and the stale-connection
retry, are in tests/core/test_client.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from multidict import CIMultiDict

from gatewayd.config.schema import PoolConfig
from gatewayd.proxy import h1

MIB = 1024 * 1024
EMPTY = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Raw:
    """A raw target: each connection runs ``script``; counts connections and the ones that
    the client closed (EOF seen by the script, through :meth:`wait_eof`)."""

    def __init__(self, script: Script, tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.connections = 0
        self.eofs = 0
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Raw:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def origin(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def head(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        return head

    async def wait_eof(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.read()
        self.eofs += 1


def answering(target: list[Raw], answer: Callable[[bytes], bytes]) -> Script:
    """A keep-alive script: ``answer(head)`` for each request (bodiless requests), until an
    answer says ``Connection: close``."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await target[0].head(reader)
                response = answer(head)
                writer.write(response)
                await writer.drain()
                if b"\r\nConnection: close\r\n" in response.split(b"\r\n\r\n", 1)[0] + b"\r\n":
                    return  # and close it
        except (asyncio.IncompleteReadError, ConnectionError):
            target[0].eofs += 1  # the client closed the connection

    return script


async def keep_alive(answer: Callable[[bytes], bytes]) -> Raw:
    ref: list[Raw] = []
    raw = Raw(answering(ref, answer))
    ref.append(raw)
    return raw


def path_of(head: bytes) -> bytes:
    return head.split(b" ", 2)[1]


@pytest.fixture
async def pool() -> AsyncIterator[h1.Pool]:
    p = h1.Pool(PoolConfig(read_buffer=64 * 1024))
    yield p
    await p.close()


def get(
    pool: h1.Pool,
    raw: Raw,
    path: str = "/",
    method: str = "GET",
    headers: CIMultiDict[str] | None = None,
    body: h1.Body = None,
    connect_timeout: float = 2.0,
) -> Awaitable[h1.Response]:
    origin = pool.origin(raw.origin)
    return pool.request(origin, method, path, headers or CIMultiDict(), body, connect_timeout)


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within the time")


async def test_origins_name_where_to_connect_and_the_host_header(pool) -> None:
    cases = {
        "http://example.com": ("example.com", 80, "example.com", False),
        "http://example.com:8080": ("example.com", 8080, "example.com:8080", False),
        "ws://127.0.0.1:81": ("127.0.0.1", 81, "127.0.0.1:81", False),
        "https://example.com": ("example.com", 443, "example.com", True),
        "wss://example.com:8443": ("example.com", 8443, "example.com:8443", True),
        "http://[::1]:8001": ("::1", 8001, "[::1]:8001", False),
    }
    for url, (host, port, authority, tls) in cases.items():
        origin = pool.origin(url)
        assert (origin.host, origin.port, origin.authority) == (host, port, authority), url
        assert (origin.tls is not None) == tls
        assert pool.origin(url) is origin  # one per origin
    with pytest.raises(ValueError):
        pool.origin("ftp://example.com")


# -- reading responses -------------------------------------------------------------------


async def test_bodies_by_content_length_chunked_and_until_close(pool) -> None:
    def answer(head: bytes) -> bytes:
        path = path_of(head)
        if path == b"/cl":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        if path == b"/chunked":
            return (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n"
            )
        return b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"

    async with await keep_alive(answer) as raw:
        resp = await get(pool, raw, "/cl")
        assert (resp.status, resp.content_length, await resp.read()) == (200, 5, b"hello")
        resp = await get(pool, raw, "/chunked")
        assert resp.content_length is None and "X-Trailer" not in resp.headers
        assert b"".join([chunk async for chunk in resp]) == b"abcdefg"
        assert raw.connections == 1  # both on one kept-alive connection
        resp = await get(pool, raw, "/close")
        assert await resp.read() == b"until the end"  # the body's end is the connection's
        resp = await get(pool, raw, "/cl")
        assert await resp.read() == b"hello"
        assert raw.connections == 2


async def test_no_body_for_head_204_304_and_interim_responses_are_skipped(pool) -> None:
    def answer(head: bytes) -> bytes:
        path = path_of(head)
        if head.startswith(b"HEAD "):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        if path == b"/204":
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        if path == b"/304":
            return b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"
        if path == b"/interim":
            return (
                b"HTTP/1.1 100 Continue\r\n\r\n"
                b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            )
        return b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"

    async with await keep_alive(answer) as raw:
        resp = await get(pool, raw, "/", "HEAD")
        assert (resp.status, resp.content_length, await resp.read()) == (200, 1000, b"")
        resp = await get(pool, raw, "/after-head")
        assert await resp.read() == b"next"  # not taken for the HEAD response's body
        for path, status in (("/204", 204), ("/304", 304)):
            resp = await get(pool, raw, path)
            assert (resp.status, await resp.read()) == (status, b"")
        resp = await get(pool, raw, "/interim")
        assert (resp.status, await resp.read()) == (200, b"ok")
        assert "Link" not in resp.headers
        resp = await get(pool, raw, "/last")
        assert await resp.read() == b"next"
        assert raw.connections == 1


async def test_the_head_comes_back_as_received(pool) -> None:
    sent = [
        ("Set-Cookie", "a=1"),
        ("x-lower", "v"),
        ("Set-Cookie", "b=2"),
        ("X-Utf8", "caf\u00e9"),
        ("Content-Length", "0"),
    ]
    head = "".join(f"{k}: {v}\r\n" for k, v in sent).encode()

    async with await keep_alive(lambda _: b"HTTP/1.1 299 Fine Thanks\r\n%s\r\n" % head) as raw:
        resp = await get(pool, raw)
        assert (resp.status, resp.reason, resp.version) == (299, "Fine Thanks", "1.1")
        assert list(resp.headers.items()) == sent
        assert resp.headers.getall("set-cookie") == ["a=1", "b=2"]


@pytest.mark.parametrize(
    ("head", "ok"),
    [
        (b"HTTP/1.1 200 " + b"r" * 8170 + b"\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200 " + b"r" * 8190 + b"\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nX-Long: " + b"v" * 8170 + b"\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nX-Long: " + b"v" * 8190 + b"\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nX-Long: " + b"v" * 2_000_000, False),  # never ends
        (b"HTTP/1.1 200 OK\r\n" + b"X-H: 1\r\n" * 127 + b"Content-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\n" + b"X-H: 1\r\n" * 128 + b"Content-Length: 0\r\n\r\n", False),
        (b"HTTP/1.1 abc\r\n\r\n", False),
        (b"SSH-2.0-OpenSSH_9.6\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", False),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", False),
    ],
)
async def test_a_head_over_the_limits_or_not_http_is_malformed(pool, head, ok) -> None:
    async with await keep_alive(lambda _: head) as raw:
        if ok:
            resp = await get(pool, raw)
            assert resp.status == 200
        else:
            with pytest.raises(h1.MalformedResponse):
                await get(pool, raw)
            assert pool.busy == 0


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 50_000,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ],
)
async def test_a_body_cut_short_fails_mid_body(pool, answer) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()  # and close: the body ends early

    async with Raw(script) as raw:
        resp = await get(pool, raw)
        assert resp.status == 200
        got = b""
        with pytest.raises(h1.Disconnected):
            async for chunk in resp:
                got += chunk
        assert got and got in answer  # what came is passed on, then the error
        assert pool.busy == 0 and not pool.origin(raw.origin).idle


# -- framing errors ------------------------------------------------------------------------


async def test_bytes_past_the_content_length_are_dropped_with_the_connection(pool) -> None:
    """nginx's way: the response is what its Content-Length framed, whole and clean; the rest
    is no response, and the connection it came on is never reused."""

    def answer(head: bytes) -> bytes:
        if path_of(head) == b"/longer":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + b"x" * 10 + b"y" * 26
        if path_of(head) == b"/longer-big":
            size = 4 * MIB
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size + b"y" * 9
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async with await keep_alive(answer) as raw:
        resp = await get(pool, raw, "/longer")
        assert await resp.read() == b"x" * 10
        assert resp.complete and resp.framing_error == "bytes past the response's end"
        assert not pool.origin(raw.origin).idle and pool.busy == 0
        resp = await get(pool, raw, "/")  # on a fresh connection
        assert (await resp.read(), resp.framing_error) == (b"ok", None)
        assert raw.connections == 2
        # Streamed in pieces, the end comes with the bytes past it: the same.
        resp = await get(pool, raw, "/longer-big")
        got = b"".join([chunk async for chunk in resp])
        assert got == b"x" * 4 * MIB and resp.framing_error == "bytes past the response's end"
        resp = await get(pool, raw, "/")
        assert await resp.read() == b"ok"
        assert raw.connections == 3  # /longer-big went on the second, dropped after it


async def test_bytes_past_the_end_that_come_late_spoil_no_next_request(pool) -> None:
    """The excess can come after the response was whole and its connection back in the pool,
    even after the next request went out on it: that request goes again on a fresh connection
    when it may be sent twice (as for a connection found closed), and fails otherwise."""
    late = b"y" * 26

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await raw.head(reader)
            if head.startswith(b"POST"):
                await reader.readexactly(2)
            if path_of(head) == b"/longer":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + b"x" * 10)
                await writer.drain()
                head = await raw.head(reader)  # the next request came on this connection
                if head.startswith(b"POST"):
                    await reader.readexactly(2)
                writer.write(late)  # and only now the rest of the previous body
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    raw = Raw(script)
    async with raw:
        resp = await get(pool, raw, "/longer")
        assert (await resp.read(), resp.framing_error) == (b"x" * 10, None)
        resp = await get(pool, raw, "/next")
        assert await resp.read() == b"ok"
        assert resp.framing_error == "bytes past the previous response's end"
        assert raw.connections == 2 and len(raw.heads) == 3  # /next went twice
        resp = await get(pool, raw, "/longer")
        assert await resp.read() == b"x" * 10
        with pytest.raises(h1.StaleBytes):  # a POST is never sent twice
            await get(pool, raw, "/post", "POST", body=b"hi")
        assert pool.busy == 0


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", h1.Truncated),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", h1.Truncated),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
            h1.MalformedResponse,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
            h1.MalformedResponse,
        ),
    ],
    ids=["content-length-eof", "chunked-eof", "bad-chunk-size", "chunk-without-crlf"],
)
async def test_a_body_that_breaks_its_framing_fails_after_what_was_framed(
    pool, answer, error
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()  # and close

    async with Raw(script) as raw:
        resp = await get(pool, raw)
        got = b""
        with pytest.raises(error) as info:
            async for chunk in resp:
                got += chunk
        assert isinstance(info.value, h1.MalformedResponse)  # a framing error, whichever
        assert got == b"abc"
        assert pool.busy == 0 and not pool.origin(raw.origin).idle


async def test_a_connection_reset_mid_body_is_a_disconnection_not_a_framing_error(pool) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # closed with linger 0: a reset

    async with Raw(script) as raw:
        resp = await get(pool, raw)
        with pytest.raises(h1.Disconnected) as info:
            await resp.read()
        assert not isinstance(info.value, h1.MalformedResponse)


# -- interim responses ---------------------------------------------------------------------


async def test_interim_responses_are_handed_to_the_callback_in_order(pool) -> None:
    def answer(head: bytes) -> bytes:
        return (
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 102 Processing\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nLink: </b.js>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )

    seen: list[tuple[int, list[tuple[str, str]]]] = []
    async with await keep_alive(answer) as raw:
        origin = pool.origin(raw.origin)
        resp = await pool.request(
            origin,
            "GET",
            "/",
            CIMultiDict(),
            None,
            2.0,
            lambda status, headers: seen.append((status, list(headers.items()))),
        )
        assert (resp.status, await resp.read()) == (200, b"ok")
        assert "Link" not in resp.headers
        assert seen == [
            (100, []),
            (102, []),
            (103, [("Link", "</a.css>; rel=preload"), ("Link", "</b.js>")]),
        ]
        resp = await get(pool, raw)  # the next exchange has no callback: skipped as before
        assert await resp.read() == b"ok"
        assert len(seen) == 3 and raw.connections == 1


# -- keep-alive ------------------------------------------------------------------------------


async def test_a_connection_is_kept_only_when_the_response_allows_and_was_read_whole(
    pool,
) -> None:
    def answer(head: bytes) -> bytes:
        path = path_of(head)
        if path == b"/close":
            return b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        if path == b"/http10":
            return b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
        if path == b"/http10-keep":
            return b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
        if path == b"/big":
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (8 * MIB) + b"b" * 8 * MIB
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async with await keep_alive(answer) as raw:
        for path, connections in [
            ("/", 1),
            ("/", 1),
            ("/close", 1),  # and closed after it
            ("/http10", 2),  # HTTP/1.0 without keep-alive: closed after it
            ("/http10-keep", 3),
            ("/http10-keep", 3),
        ]:
            resp = await get(pool, raw, path)
            assert await resp.read() == b"ok"
            resp.close()
            assert raw.connections == connections, path
        # A response closed before its end: its connection is not kept.
        before = raw.connections
        resp = await get(pool, raw, "/big")
        assert len(await resp.readany()) > 0
        await resp.aclose()
        resp = await get(pool, raw, "/")
        assert await resp.read() == b"ok"
        assert raw.connections == before + 1
        await until(lambda: raw.eofs == 2)  # http10 and big: closed by the client


async def test_an_idle_connection_the_target_closes_leaves_the_pool(pool) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.05)  # then its own idle timeout closes it

    raw = Raw(script)
    async with raw:
        resp = await get(pool, raw)
        assert await resp.read() == b"ok"
        origin = pool.origin(raw.origin)
        assert len(origin.idle) == 1
        await until(lambda: not origin.idle)  # seen closed: dropped without a request
        resp = await get(pool, raw)
        assert await resp.read() == b"ok"
        assert len(raw.heads) == 2  # no request was lost on the closed connection


async def test_a_reused_connection_found_closed_retries_resendable_idempotent_requests(
    pool,
) -> None:
    """As in test_client.py with more methods: the target drops every second request."""
    bodies: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await raw.head(reader)
        length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n")[0])
        bodies.append(await reader.readexactly(length))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await raw.head(reader)  # the second request: dropped unanswered

    raw = Raw(script)
    async with raw:
        for method in ("PUT", "DELETE", "PUT"):
            resp = await get(pool, raw, "/", method, body=b"data")
            assert await resp.read() == b"ok"
        assert bodies == [b"data"] * 3  # each sent whole, once more after a drop
        with pytest.raises(h1.Disconnected):
            await get(pool, raw, "/", "PATCH", body=b"data")  # not idempotent
        assert len(bodies) == 3


# -- the pool --------------------------------------------------------------------------------


async def test_max_connections_makes_requests_wait_within_the_connect_timeout() -> None:
    go = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await raw.head(reader)
            if path_of(head) == b"/slow":
                await go.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    raw = Raw(script)
    pool = h1.Pool(PoolConfig(max_connections=1))
    try:
        async with raw:
            slow = asyncio.create_task(get(pool, raw, "/slow"))
            await until(lambda: len(raw.heads) == 1)
            waiting = asyncio.create_task(get(pool, raw, "/next"))
            await asyncio.sleep(0.1)
            assert not waiting.done()  # no slot
            go.set()
            assert await (await slow).read() == b"ok"
            assert await (await waiting).read() == b"ok"
            assert raw.connections == 1  # it took the connection that came free
            go.clear()
            slow = asyncio.create_task(get(pool, raw, "/slow"))
            await until(lambda: len(raw.heads) == 3)
            started = asyncio.get_running_loop().time()
            with pytest.raises(h1.ConnectTimeout):
                await get(pool, raw, "/next", connect_timeout=0.2)
            assert asyncio.get_running_loop().time() - started < 1
            go.set()
            assert await (await slow).read() == b"ok"
            assert pool.busy == 0
    finally:
        await pool.close()


async def test_idle_connections_close_after_the_keepalive_timeout() -> None:
    pool = h1.Pool(PoolConfig(keepalive=0.2))
    try:
        async with await keep_alive(lambda _: EMPTY) as raw:
            await (await get(pool, raw)).read()
            await asyncio.sleep(0.05)
            await (await get(pool, raw)).read()  # still kept
            assert raw.connections == 1
            await until(lambda: raw.eofs == 1, timeout=1)
            assert not pool.origin(raw.origin).idle
    finally:
        await pool.close()


async def test_close_closes_idle_connections_now_and_busy_ones_when_done() -> None:
    go = asyncio.Event()

    raw = await keep_alive(lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    answer = raw.script

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if raw.connections == 1:  # the first connection's first request is slow
            await go.wait()
        await answer(reader, writer)

    raw.script = script
    pool = h1.Pool(PoolConfig())
    async with raw:
        slow = asyncio.create_task(get(pool, raw, "/slow"))
        await until(lambda: raw.connections == 1)
        await (await get(pool, raw, "/")).read()  # on a second connection, now idle
        assert raw.connections == 2
        await pool.close()
        await until(lambda: raw.eofs == 1)  # the idle one
        with pytest.raises(h1.ClientClosed):
            await get(pool, raw)
        go.set()
        assert await (await slow).read() == b"ok"
        await until(lambda: raw.eofs == 2)  # the busy one, once its response was done


async def test_connection_refused_is_a_connect_error(pool) -> None:
    async with await keep_alive(lambda _: b"") as raw:
        origin = raw.origin
    with pytest.raises(h1.ConnectError) as info:
        await pool.request(pool.origin(origin), "GET", "/", CIMultiDict(), None, 2.0)
    assert isinstance(info.value, OSError)
    assert pool.busy == 0


# -- cancellation ----------------------------------------------------------------------------


async def test_a_cancelled_request_closes_its_connection_and_stays_cancelled(pool) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.head(reader)
        await raw.wait_eof(reader)  # never answers

    raw = Raw(script)
    async with raw:
        task = asyncio.create_task(get(pool, raw))
        await until(lambda: len(raw.heads) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        await until(lambda: raw.eofs == 1)
        assert pool.busy == 0 and not pool.origin(raw.origin).idle


async def test_a_request_cancelled_while_it_waits_for_a_slot_takes_none() -> None:
    pool = h1.Pool(PoolConfig(max_connections=1))

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.head(reader)
        await raw.wait_eof(reader)

    raw = Raw(script)
    try:
        async with raw:
            holder = asyncio.create_task(get(pool, raw))
            await until(lambda: len(raw.heads) == 1)
            waiter = asyncio.create_task(get(pool, raw))
            await asyncio.sleep(0.05)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            holder.cancel()
            with pytest.raises(asyncio.CancelledError):
                await holder
            assert pool.busy == 0
    finally:
        await pool.close()


# -- flow control ----------------------------------------------------------------------------


async def test_reading_from_the_target_pauses_while_the_reader_lags(pool) -> None:
    size, sent = 64 * MIB, [0]
    block = bytes(range(256)) * 4096  # 1 MiB

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        while sent[0] < size:
            writer.write(block)
            sent[0] += len(block)
            await writer.drain()

    async with Raw(script) as raw:
        resp = await get(pool, raw)
        first = await resp.readany()
        stalled = -1
        for _ in range(40):  # until the target stalls
            await asyncio.sleep(0.1)
            if sent[0] == stalled:
                break
            stalled = sent[0]
        # What left the target sits in the kernel's socket buffers and one read buffer.
        assert stalled < 24 * MIB
        total = len(first)
        async for chunk in resp:
            assert len(chunk) <= 64 * 1024 + 512 * 1024
            total += len(chunk)
        assert total == size


async def test_a_streamed_request_body_waits_for_a_slow_target(pool) -> None:
    size, produced = 64 * MIB, [0]
    go = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        while produced[0] < size:
            produced[0] += 256 * 1024
            yield b"u" * (256 * 1024)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await go.wait()
        got = 0
        while True:  # chunked
            line = await reader.readuntil(b"\r\n")
            n = int(line.strip(), 16)
            await reader.readexactly(n + 2)
            got += n
            if not n:
                break
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(got)), got))
        await writer.drain()

    async with Raw(script) as raw:
        task = asyncio.create_task(get(pool, raw, "/", "POST", body=body()))
        await asyncio.sleep(0.5)
        assert produced[0] < 32 * MIB  # the writes wait for the target to read
        go.set()
        resp = await task
        assert await resp.read() == str(size).encode()


async def test_a_streams_content_length_is_honoured_exactly(pool) -> None:
    received: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await raw.head(reader)
            received.append(await reader.readexactly(6))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async def stream(*parts: bytes) -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    raw = Raw(script)
    async with raw:
        headers = CIMultiDict({"Content-Length": "6"})
        resp = await get(pool, raw, "/", "POST", headers, stream(b"abcd", b"efghij"))
        assert await resp.read() == b"ok"
        resp = await get(pool, raw, "/", "POST", headers, stream(b"123456"))
        assert await resp.read() == b"ok"
        assert received == [b"abcdef", b"123456"]  # nothing past the length went out
        assert raw.connections == 1
        assert all(b"transfer-encoding" not in head.lower() for head in raw.heads)
        with pytest.raises(h1.ClientError):  # shorter than it said: never completed
            await get(pool, raw, "/", "POST", headers, stream(b"abc"))
        assert pool.busy == 0


async def test_a_line_break_in_a_header_is_refused_before_anything_is_sent(pool) -> None:
    async with await keep_alive(lambda _: EMPTY) as raw:
        for headers in ({"X-A": "1\r\nX-Injected: 1"}, {"X-A\nB": "1"}, {"X-A": "1\r"}):
            with pytest.raises(ValueError):
                await get(pool, raw, headers=CIMultiDict(headers))
        with pytest.raises(ValueError):
            await get(pool, raw, "/ HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET /")
        assert raw.connections == 0


# -- TLS -------------------------------------------------------------------------------------


async def test_https_targets_are_verified_with_the_default_context(monkeypatch, tmp_path) -> None:
    import trustme

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))

    def server_context(name: str) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(name).configure_cert(ctx)
        return ctx

    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecure"
    ref: list[Raw] = []
    raw = Raw(answering(ref, lambda _: ok), tls=server_context("127.0.0.1"))
    ref.append(raw)
    wrong: list[Raw] = []
    other = Raw(answering(wrong, lambda _: ok), tls=server_context("other.example"))
    wrong.append(other)
    pool = h1.Pool(PoolConfig())
    try:
        async with raw, other:
            for _ in range(2):
                resp = await get(pool, raw)
                assert await resp.read() == b"secure"
            assert raw.connections == 1
            assert ref[0].heads[0].split(b"\r\n")[1] == b"Host: " + raw.origin[8:].encode()
            with pytest.raises(h1.ConnectError):  # the certificate names another host
                await get(pool, other)
    finally:
        await pool.close()
