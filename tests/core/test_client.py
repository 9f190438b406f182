"""The forwarder's HTTP client (gatewayd.proxy.h1: httptools on asyncio protocols): what it
sends is what it was given, what it returns is what the target said, and a stale pooled
connection is retried only when that is safe. Against raw sockets, to see the bytes."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from multidict import CIMultiDict
from yarl import URL

from gatewayd.config.schema import PoolConfig
from gatewayd.proxy import h1

Answer = Callable[[bytes, bytes], bytes]  # (head, body) -> the raw response


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


class Target:
    """A raw HTTP/1.1 server: records each request (head, body) and answers with ``answer``;
    with ``drop_after`` it drops a connection, unanswered, once it served that many requests
    (the keep-alive race: the target closes a connection the pool still holds)."""

    def __init__(self, answer: Answer = lambda head, body: ok(), drop_after: int = 0) -> None:
        self.answer = answer
        self.drop_after = drop_after
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Target:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def url(self, path: str = "/p") -> URL:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return URL(f"http://127.0.0.1:{port}{path}", encoded=True)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if self.drop_after and served == self.drop_after:
                    self.requests.append((head, b"<dropped>"))
                    break
                body = await self.read_body(reader, head)
                self.requests.append((head, body))
                writer.write(self.answer(head, body))
                await writer.drain()
                served += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    @staticmethod
    async def read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
        fields = headers_of(head)
        if "content-length" in fields:
            return await reader.readexactly(int(fields["content-length"][0]))
        if "chunked" in fields.get("transfer-encoding", [""])[0]:
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await reader.readexactly(size + 2)
                if not size:
                    return body
                body += chunk[:-2]
        return b""


def headers_of(head: bytes) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for line in head.decode().split("\r\n")[1:]:
        if line:
            name, _, value = line.partition(":")
            fields.setdefault(name.lower(), []).append(value.strip())
    return fields


def names_of(head: bytes) -> list[str]:
    return [line.split(":", 1)[0] for line in head.decode().split("\r\n")[1:] if line]


@pytest.fixture
async def client() -> AsyncIterator[h1.Pool]:
    c = h1.Pool(PoolConfig(read_buffer=64 * 1024))
    yield c
    await c.close()


def send(
    client: h1.Pool,
    url: URL,
    headers: CIMultiDict[str],
    method: str,
    body: h1.Body,
    connect_timeout: float,
) -> Awaitable[h1.Response]:
    origin = client.origin(str(url.origin()))
    return client.request(origin, method, url.raw_path_qs, headers, body, connect_timeout)


async def fetch(
    client: h1.Pool,
    url: URL,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    method: str = "GET",
    body: h1.Body = None,
) -> tuple[h1.Response, bytes]:
    resp = await send(client, url, CIMultiDict(headers or {}), method, body, 2.0)
    data = await resp.read()
    resp.close()
    return resp, data


async def test_the_clients_headers_go_as_they_are_and_nothing_is_added(client) -> None:
    async with Target() as target:
        headers = [("X-Dup", "1"), ("Cookie", "a=1"), ("X-Dup", "2"), ("X-Request-ID", "r1")]
        resp, data = await fetch(client, target.url("/a%2Fb/c?x=%20"), headers)
        assert (resp.status, data) == (200, b"ok")
        head = target.requests[0][0]
        assert head.startswith(b"GET /a%2Fb/c?x=%20 HTTP/1.1\r\n")  # the URL as given
        assert names_of(head) == ["Host", "X-Dup", "Cookie", "X-Dup", "X-Request-ID"]
        fields = headers_of(head)
        assert fields["host"] == [target.url().host_port_subcomponent]
        assert fields["x-dup"] == ["1", "2"]
        # a forwarded Host (preserve_host) wins over the target's
        await fetch(client, target.url(), {"Host": "api.example.com", "Accept": "text/plain"})
        head = target.requests[1][0]
        assert names_of(head) == ["Host", "Accept"]
        assert headers_of(head)["host"] == ["api.example.com"]


@pytest.mark.parametrize("length", [False, True])
async def test_bodies_bytes_and_streamed_go_without_an_invented_content_type(
    client, length: bool
) -> None:
    async def stream() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * 1000
            await asyncio.sleep(0)

    async with Target() as target:
        await fetch(client, target.url(), {"Content-Length": "5"}, "POST", b"hello")
        head, body = target.requests[0]
        assert body == b"hello"
        assert names_of(head) == ["Host", "Content-Length"]
        headers = {"Content-Length": "4000"} if length else {}
        await fetch(client, target.url(), headers, "PUT", stream())
        head, body = target.requests[1]
        assert body == b"x" * 4000
        fields = headers_of(head)
        assert "content-type" not in fields
        if length:  # sent with the client's length, as it came
            assert fields["content-length"] == ["4000"] and "transfer-encoding" not in fields
        else:
            assert fields["transfer-encoding"] == ["chunked"] and "content-length" not in fields
        await fetch(client, target.url(), None, "POST")  # no body: an explicit empty one
        assert headers_of(target.requests[2][0])["content-length"] == ["0"]


async def test_the_targets_answer_comes_back_as_it_was_sent(client) -> None:
    """No decompression, no redirect followed, no cookie kept for the next request."""
    packed = gzip.compress(b"hello " * 100)

    def answer(head: bytes, body: bytes) -> bytes:
        if head.startswith(b"GET /gz "):
            return ok(packed, b"Content-Encoding: gzip\r\n")
        if head.startswith(b"GET /moved "):
            moved = b"Location: /gz\r\nSet-Cookie: s=1\r\nContent-Length: 0\r\n"
            return b"HTTP/1.1 302 Found\r\n%s\r\n" % moved
        return ok()

    async with Target(answer) as target:
        resp, data = await fetch(client, target.url("/gz"), {"Accept-Encoding": "gzip"})
        assert data == packed and resp.headers["Content-Encoding"] == "gzip"
        resp, data = await fetch(client, target.url("/moved"))
        assert resp.status == 302 and resp.headers["Location"] == "/gz"
        await fetch(client, target.url("/next"))
        assert [h.split(b" ")[1] for h, _ in target.requests] == [b"/gz", b"/moved", b"/next"]
        assert "cookie" not in headers_of(target.requests[2][0])


async def test_a_stale_pooled_connection_is_retried_for_idempotent_requests_only(client) -> None:
    """The target answers the first request on each connection and drops the second unanswered:
    a GET is sent again on a fresh connection; a POST (the target may have acted on it) fails,
    and so does a PUT whose streamed body had started (it cannot be sent again)."""
    async with Target(drop_after=1) as target:
        for _ in range(3):
            resp, data = await fetch(client, target.url())
            assert (resp.status, data) == (200, b"ok")
        methods = [h.split(b" ", 1)[0] for h, _ in target.requests]
        assert methods == [b"GET", b"GET", b"GET", b"GET", b"GET"]  # 1, (dropped, again) x2
        with pytest.raises(h1.Disconnected):
            await fetch(client, target.url(), {"Content-Length": "2"}, "POST", b"hi")
        assert [h.split(b" ", 1)[0] for h, _ in target.requests[5:]] == [b"POST"]  # once

        async def stream() -> AsyncIterator[bytes]:
            yield b"part"
            await asyncio.sleep(0.05)
            yield b"rest"

        await fetch(client, target.url())  # a pooled connection with one request served
        before = len(target.requests)
        with contextlib.suppress(h1.Disconnected):
            await fetch(client, target.url(), None, "PUT", stream())  # fails if it had started
        sent = target.requests[before:]
        assert [h.split(b" ", 1)[0] for h, _ in sent] in ([b"PUT"], [b"PUT", b"PUT"])
        if len(sent) == 2:  # sent again only because nothing of the body had gone yet
            assert sent[1][1] == b"partrest"


async def test_the_connect_timeout_is_a_connect_timeout(client) -> None:
    # A listening socket whose backlog is full never accepts: connects hang until the timeout.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(0)
        port = sock.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):
                s = socket.socket()
                s.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    s.connect(("127.0.0.1", port))
                fillers.append(s)
            url = URL(f"http://127.0.0.1:{port}/", encoded=True)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(h1.ConnectTimeout):
                await send(client, url, CIMultiDict(), "GET", None, 0.2)
            assert loop.time() - started < 2
        finally:
            for s in fillers:
                s.close()
