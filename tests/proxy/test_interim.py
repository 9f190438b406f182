"""Interim (1xx) responses: the http kind hands each one the target sends before its final reply
to ``RequestContext.send_interim`` (gatewayd.proxy.interim keeps them in order), which writes it
to an HTTP/1.1 client before the final response. Through the real daemon with a raw backend and
raw-socket clients (the bytes on the wire), aiohttp's client, and a cache route; then the hook's
own rules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from gatewayd.chain.api import INTERIM_MAX, Request, RequestContext, Response, RouteInfo

HINTS = (
    b"HTTP/1.1 103 Early Hints\r\n"
    b"Link: </style.css>; rel=preload\r\n"
    b"Connection: X-Hop\r\n"
    b"X-Hop: 1\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"\r\n"
)
RELAYED = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
FINAL = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nCache-Control: max-age=60\r\n\r\nfinal"


@dataclass
class HintingBackend:
    """Sends the 103 at once and the final reply when ``go`` is set (or at once, if
    ``wait`` is off); ``/many`` sends 10 interim responses first."""

    server: asyncio.Server | None = None
    wait: bool = False
    go: asyncio.Event = field(default_factory=asyncio.Event)
    hits: int = 0

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.hits += 1
                if b" /many " in head:
                    writer.write(b"HTTP/1.1 102 Processing\r\n\r\n" * 5 + HINTS * 5)
                else:
                    writer.write(HINTS)
                await writer.drain()
                if self.wait:
                    await self.go.wait()
                    self.go.clear()
                writer.write(FINAL)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def hinting() -> AsyncIterator[HintingBackend]:
    backend = HintingBackend()
    backend.server = await asyncio.start_server(backend.serve, "127.0.0.1", 0)
    yield backend
    backend.server.close()
    await backend.server.wait_closed()


async def start(gateway: Any, config: Any, backend: HintingBackend, plugins: list[Any]) -> Any:
    cfg = config(
        upstreams={"u": {"targets": [backend.url]}},
        routes=[{"name": "r", "match": {"path": "/"}, "upstream": "u", "plugins": plugins}],
    )
    return await gateway(cfg)


async def raw_request(
    d: Any, path: str, version: str = "1.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = d.config["listen"][0]["address"].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {path} HTTP/{version}\r\nHost: gw\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def read_final(reader: asyncio.StreamReader) -> bytes:
    """Every byte up to the end of the final response's body (``final``)."""
    data = b""
    while not data.endswith(b"final"):
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        assert chunk, data
        data += chunk
    return data


async def test_a_103_goes_to_an_http11_client_before_the_final_response(
    gateway, config, hinting
) -> None:
    hinting.wait = True
    d = await start(gateway, config, hinting, [])
    reader, writer = await raw_request(d, "/page")
    try:
        # The hints arrive while the backend still works on the final reply.
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert first == RELAYED  # hop-by-hop headers (and those Connection names) removed
        hinting.go.set()
        rest = await read_final(reader)
        assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
        assert rest.endswith(b"\r\n\r\nfinal") and b"Content-Length: 5\r\n" in rest
        assert b"Link" not in rest
    finally:
        writer.close()


async def test_no_interim_response_for_an_http10_client(gateway, config, hinting) -> None:
    d = await start(gateway, config, hinting, [])
    reader, writer = await raw_request(d, "/page", "1.0")
    try:
        data = await read_final(reader)
        assert data.startswith(b"HTTP/1.0 200 OK\r\n") and b"103" not in data
    finally:
        writer.close()


async def test_aiohttps_client_reads_the_final_response_after_a_103(
    gateway, config, hinting
) -> None:
    d = await start(gateway, config, hinting, [])
    async with aiohttp.ClientSession() as s:
        for _ in range(2):  # and the connection stays usable
            async with s.get(d.url + "/page") as r:
                assert (r.status, await r.read()) == (200, b"final")
                assert "Link" not in r.headers


async def test_interim_responses_are_bounded_per_request(gateway, config, hinting) -> None:
    d = await start(gateway, config, hinting, [])
    reader, writer = await raw_request(d, "/many")
    try:
        data = await read_final(reader)
        interim, _, final = data.rpartition(b"HTTP/1.1 200 OK\r\n")
        assert interim == b"HTTP/1.1 102 Processing\r\n\r\n" * INTERIM_MAX
        assert final.endswith(b"final")
    finally:
        writer.close()


async def test_a_cache_never_stores_nor_replays_an_interim_response(
    gateway, config, hinting
) -> None:
    d = await start(gateway, config, hinting, [{"cache": {"default_ttl": "60s"}}])
    reader, writer = await raw_request(d, "/cached")
    try:
        data = await read_final(reader)
        assert data.startswith(RELAYED + b"HTTP/1.1 200 OK\r\n")  # a miss: live from the target
        assert b"X-Cache: MISS" in data
    finally:
        writer.close()
    reader, writer = await raw_request(d, "/cached")
    try:
        data = await read_final(reader)
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")  # the hit: the final response alone
        assert b"X-Cache: HIT" in data and b"103" not in data and b"Link" not in data
    finally:
        writer.close()
    assert hinting.hits == 1


async def test_a_client_waiting_for_100_continue_gets_the_backends(
    gateway, config, backend
) -> None:
    """aiohttp's server, the backend here, answers ``Expect: 100-continue`` itself; the gateway
    forwards the header and relays the ``100 Continue``, so a client that waits for it (as
    curl does, for a while) can send its body."""

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_post("/upload", echo)
    srv = await backend(app)
    d = await gateway(
        config(
            upstreams={"u": {"targets": [f"http://127.0.0.1:{srv.port}"]}},
            routes=[{"name": "r", "match": {"path": "/"}, "upstream": "u"}],
        )
    )
    host, port = d.config["listen"][0]["address"].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")  # only now
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
    finally:
        writer.close()


# -- the hook ---------------------------------------------------------------------------------


class Collected:
    """An ``InterimWriter`` that keeps what it is given (the client's side of the socket)."""

    def __init__(self) -> None:
        self.data = b""

    async def write(self, chunk: bytes) -> None:
        self.data += chunk


def context(writer: Collected | None) -> RequestContext:
    request = Request("GET", "/", "", CIMultiDict(), "h", "http", "127.0.0.1", None, None)
    ctx = RequestContext(request, "rid", RouteInfo("r", "u", "/"))
    ctx.interim_writer = writer
    return ctx


async def test_send_interim_writes_1xx_only_before_the_final_response() -> None:
    out = Collected()
    ctx = context(out)
    await ctx.send_interim(103, CIMultiDict([("Link", "</a>"), ("Link", "</b>")]))
    await ctx.send_interim(100, CIMultiDict())
    await ctx.send_interim(199, CIMultiDict())
    assert out.data == (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\nLink: </b>\r\n\r\n"
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 199 \r\n\r\n"
    )
    out.data = b""
    await ctx.send_interim(101, CIMultiDict([("Upgrade", "x")]))  # upgrades: their own path
    await ctx.send_interim(200, CIMultiDict())
    await ctx.send_interim(103, CIMultiDict([("Link", "</a>\r\nX-Injected: 1")]))
    await ctx.send_interim(103, CIMultiDict([("Bad Name", "v")]))
    assert out.data == b""
    ctx.response = Response(200)  # the final response has started
    await ctx.send_interim(103, CIMultiDict())
    assert out.data == b""
    await context(None).send_interim(103, CIMultiDict())  # no writer (HTTP/1.0): nothing


async def test_send_interim_is_bounded_in_count_and_bytes() -> None:
    out = Collected()
    ctx = context(out)
    for _ in range(INTERIM_MAX + 3):
        await ctx.send_interim(103, CIMultiDict([("Link", "</a>")]))
    assert out.data.count(b"HTTP/1.1 103") == INTERIM_MAX
    out = Collected()
    ctx = context(out)
    await ctx.send_interim(103, CIMultiDict([("Link", "x" * 9000)]))  # alone over the bytes
    await ctx.send_interim(103, CIMultiDict([("Link", "y" * 5000)]))
    await ctx.send_interim(103, CIMultiDict([("Link", "z" * 5000)]))  # the two over the bytes
    assert out.data.count(b"HTTP/1.1 103") == 1 and b"y" * 5000 in out.data


async def test_a_client_gone_is_no_error_and_ends_the_relay() -> None:
    class Gone(Collected):
        async def write(self, chunk: bytes) -> None:
            raise ConnectionResetError("gone")

    ctx = context(Gone())
    await ctx.send_interim(103, CIMultiDict())
    assert ctx.interim_writer is None
