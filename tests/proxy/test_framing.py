"""Upstream framing errors through the real daemon (the ``http`` kind), against a raw backend
that sends exactly the bad bytes: handled as nginx does. What was framed right reaches the
client; the upstream connection is dropped, never reused; the error is counted
(``gatewayd_upstream_errors_total{kind="framing"}``) and logged once; a client that got nothing
yet gets 502 with the JSON error body, one that got the head has its connection cut."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

MIB = 1024 * 1024
BIG = 256 * 1024  # above the http kind's read-whole threshold (64 KiB): streamed
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

ANSWERS: dict[str, bytes] = {
    # read whole (small, with a Content-Length)
    "/longer": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + b"x" * 10 + b"y" * 26,
    "/shorter": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
    # streamed
    "/longer-big": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG + b"x" * BIG + b"y" * 36,
    "/shorter-big": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG + b"x" * (BIG // 2),
    "/chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
    "/chunk-crlf": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
    "/chunk-eof": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    # bad heads
    "/cl-and-te": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    ),
    "/two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "/garbage": b"HELLO\r\n\r\n",
    "/long-header": b"HTTP/1.1 200 OK\r\nX-Long: " + b"v" * 9000 + b"\r\nContent-Length: 0\r\n\r\n",
}


@dataclass
class RawBackend:
    """Answers ``/ok`` on a kept-alive connection; each path of ANSWERS with its bytes, then
    closes. Counts connections and the requests seen on each."""

    server: asyncio.Server | None = None
    connections: int = 0
    requests: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                self.requests.append((conn, head.split(b" ", 2)[1]))
                answer = ANSWERS.get(path)
                writer.write(OK if answer is None else answer)
                await writer.drain()
                if answer is not None:
                    await asyncio.sleep(0.05)  # the bytes go out before the close
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def raw_backend() -> AsyncIterator[RawBackend]:
    backend = RawBackend()
    backend.server = await asyncio.start_server(backend.serve, "127.0.0.1", 0)
    yield backend
    backend.server.close()
    await backend.server.wait_closed()


@pytest.fixture
async def daemon(gateway, config, raw_backend):
    cfg = config(
        upstreams={"u": {"targets": [raw_backend.url]}},
        routes=[{"name": "r", "match": {"path": "/"}, "upstream": "u"}],
    )
    return await gateway(cfg)


def framing_lines(d: Any, request_id: str) -> list[dict[str, Any]]:
    lines = []
    for line in d.logs().splitlines():
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        if rec.get("message") == "upstream framing error" and rec.get("request_id") == request_id:
            lines.append(rec)
    return lines


async def framing_count(d: Any) -> float:
    return await d.metric("gatewayd_upstream_errors_total", kind="framing", upstream="u")


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not within the time")


async def then_next_request_works(
    session: aiohttp.ClientSession, d: Any, backend: RawBackend
) -> None:
    """The next request to the upstream works, on a connection of its own."""
    bad_connection = backend.requests[-1][0]
    async with session.get(d.url + "/ok") as r:
        assert (r.status, await r.read()) == (200, b"ok")
    assert backend.requests[-1] == (backend.connections, b"/ok")
    assert backend.requests[-1][0] != bad_connection


async def check_logged_once(d: Any, rid: str, reason: str) -> None:
    await until(lambda: len(framing_lines(d, rid)) >= 1)
    lines = framing_lines(d, rid)
    assert len(lines) == 1, lines
    line = lines[0]
    assert line["level"] == "WARNING" and line["upstream"] == "u" and reason in line["reason"]
    assert "yyy" not in json.dumps(line) and "vvv" not in json.dumps(line)  # no body, no header


async def test_a_body_longer_than_its_content_length_is_cut_to_it_cleanly(
    daemon, raw_backend
) -> None:
    async with aiohttp.ClientSession() as s:
        for path, size in (("/longer", 10), ("/longer-big", BIG)):
            before = await framing_count(daemon)
            async with s.get(daemon.url + path) as r:
                assert r.status == 200, path
                body = await r.read()  # a clean, complete response
                assert body == b"x" * size, path
                assert r.headers.get("Content-Length") == str(size)
                rid = r.headers["X-Request-ID"]
            assert await framing_count(daemon) == before + 1, path
            await check_logged_once(daemon, rid, "past the response's end")
            await then_next_request_works(s, daemon, raw_backend)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/shorter", "mid-body"),  # small: read whole before anything is sent
        ("/cl-and-te", "Transfer-Encoding"),
        ("/two-lengths", "Content-Length"),
        ("/garbage", "malformed"),
        ("/long-header", "header line too long"),
    ],
)
async def test_a_framing_error_before_anything_was_sent_is_a_502(
    daemon, raw_backend, path, reason
) -> None:
    async with aiohttp.ClientSession() as s:
        before = await framing_count(daemon)
        async with s.get(daemon.url + path) as r:
            assert r.status == 502
            assert r.headers["Content-Type"] == "application/json"
            error = (await r.json())["error"]
            rid = r.headers["X-Request-ID"]
            assert error["code"] == "upstream_error" and error["request_id"] == rid
        assert await framing_count(daemon) == before + 1
        await check_logged_once(daemon, rid, reason)
        await then_next_request_works(s, daemon, raw_backend)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/shorter-big", "mid-body"),
        ("/chunk-size", "chunk size"),
        ("/chunk-crlf", "chunk"),
        ("/chunk-eof", "mid-body"),
    ],
)
async def test_a_framing_error_after_the_head_cuts_the_client_connection(
    daemon, raw_backend, path, reason
) -> None:
    async with aiohttp.ClientSession() as s:
        before = await framing_count(daemon)
        async with s.get(daemon.url + path) as r:
            assert r.status == 200  # the head went out before the body broke
            rid = r.headers["X-Request-ID"]
            with pytest.raises(aiohttp.ClientPayloadError):  # never a clean end
                await r.read()
        assert await framing_count(daemon) == before + 1
        await check_logged_once(daemon, rid, reason)
        await then_next_request_works(s, daemon, raw_backend)
