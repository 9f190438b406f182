"""gatewayd.daemon.protocol on a real aiohttp low-level server and raw sockets: the status of
every kind of malformed request, the JSON body, the rate-limited log, the counter and the Server
header."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gatewayd.config.schema import ServerConfig
from gatewayd.daemon.protocol import (
    BAD_FRAMING,
    BAD_HEADER,
    BAD_METHOD,
    BAD_REQUEST,
    BAD_REQUEST_LINE,
    BAD_TARGET,
    BAD_VERSION,
    HEADER_TOO_LONG,
    HEADERS_TOO_LARGE,
    MESSAGES,
    TRANSFER_CODING,
    URI_TOO_LONG,
    GuardedServer,
    ProtocolGuard,
    RateLimitedLog,
    Refusal,
    RefusedRequest,
)
from gatewayd.observability.metrics import Metrics

SECRET = "s3cr3t-bearer-token-" + "x" * 40


@dataclass
class Reply:
    status_line: str
    headers: dict[str, str]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split()[1])

    def json(self) -> dict[str, str]:
        return dict(json.loads(self.body)["error"])


def parse(data: bytes) -> Reply:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(lines[0], headers, body)


async def exchange(port: int, data: bytes) -> Reply:
    """Send ``data``, read until the server closes (every refusal closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        got = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    return parse(got)


@dataclass
class Served:
    port: int
    guard: ProtocolGuard
    metrics: Metrics
    handled: list[web.BaseRequest] = field(default_factory=list)


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


async def ok(raw: web.BaseRequest) -> web.StreamResponse:
    return web.Response(text="ok")


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    """``await serve(handler, **server_config)``: a GuardedServer on a free port, wired like
    gatewayd.daemon.listeners does it."""
    runners: list[web.ServerRunner] = []
    metrics: list[Metrics] = []

    async def start(handler: Handler = ok, **settings: object) -> Served:
        cfg = ServerConfig.model_validate(settings)
        m = Metrics(CollectorRegistry())
        metrics.append(m)
        guard = ProtocolGuard(cfg, m.protocol_errors)
        served = Served(0, guard, m)

        def handle(raw: web.BaseRequest) -> Awaitable[web.StreamResponse]:
            if raw.__class__ is RefusedRequest:
                return guard.answer(raw)
            served.handled.append(raw)
            return handler(raw)

        server = GuardedServer(
            handle,
            guard,
            handler_cancellation=True,
            max_line_size=cfg.max_request_line,
            max_field_size=cfg.max_header_size,
            max_headers=cfg.max_headers,
            keepalive_timeout=cfg.keepalive_timeout,
            access_log=None,
        )
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        served.port = runner.addresses[0][1]
        return served

    yield start
    for r in runners:
        await r.cleanup()
    for m in metrics:
        m.close()


def count(srv: Served, reason: str) -> float | None:
    return srv.metrics.registry.get_sample_value(
        "gatewayd_protocol_errors_total", {"reason": reason}
    )


def req(line: str = "GET / HTTP/1.1", *headers: str, body: bytes = b"") -> bytes:
    return ("\r\n".join([line, "Host: x", *headers]) + "\r\n\r\n").encode("latin-1") + body


# One request per entry of protocol.MESSAGES (the llhttp texts we match), plus the class- and
# limit-based mappings and the request factory's own checks.
CASES: list[tuple[str, bytes, Refusal]] = [
    ("bad version", b"GET / HTTP/1.7\r\nHost: x\r\n\r\n", BAD_VERSION),
    ("TE gzip", req("POST / HTTP/1.1", "Transfer-Encoding: gzip"), TRANSFER_CODING),
    (
        "TE chunked, gzip",
        req("POST / HTTP/1.1", "Transfer-Encoding: chunked, gzip"),
        TRANSFER_CODING,
    ),
    (
        "too many headers",
        req("GET / HTTP/1.1", *(f"X-H{i}: v" for i in range(200))),
        HEADERS_TOO_LARGE,
    ),
    (
        "CL then TE",
        req(
            "POST / HTTP/1.1", "Content-Length: 5", "Transfer-Encoding: chunked", body=b"0\r\n\r\n"
        ),
        BAD_FRAMING,
    ),
    (
        "TE then CL",
        req(
            "POST / HTTP/1.1", "Transfer-Encoding: chunked", "Content-Length: 5", body=b"0\r\n\r\n"
        ),
        BAD_FRAMING,
    ),
    (
        "duplicate CL",
        req("POST / HTTP/1.1", "Content-Length: 5", "Content-Length: 5", body=b"hello"),
        BAD_FRAMING,
    ),
    ("long target", req("GET /" + "a" * 9000 + " HTTP/1.1"), URI_TOO_LONG),
    (
        "long header",
        req("GET / HTTP/1.1", "Authorization: Bearer " + SECRET * 300),
        HEADER_TOO_LONG,
    ),
    ("long header name", req("GET / HTTP/1.1", "X" * 20000 + ": v"), HEADER_TOO_LONG),
    ("bad method", req("G@T / HTTP/1.1"), BAD_METHOD),
    ("TLS on the plain port", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", BAD_METHOD),
    ("garbage version", req("GET / FOO/1.1"), BAD_REQUEST_LINE),
    ("space in target", req("GET /a b HTTP/1.1"), BAD_REQUEST_LINE),
    ("bare LF", b"GET / HTTP/1.1\nHost: x\n\n", BAD_REQUEST_LINE),
    ("NUL in target", req("GET /a\x00b HTTP/1.1"), BAD_TARGET),
    ("old WebSocket key", req("GET / HTTP/1.1", "Sec-WebSocket-Key1: 1"), BAD_HEADER),
    ("NUL in header", req("GET / HTTP/1.1", f"X-A: {SECRET}\x00b"), BAD_REQUEST),
    ("obs-fold", req("GET / HTTP/1.1", "X-A: a", f" {SECRET}"), BAD_REQUEST),
    ("bare LF in headers", b"GET / HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n", BAD_REQUEST),
    ("no Host in 1.1", b"GET / HTTP/1.1\r\n\r\n", BAD_REQUEST),
    # the request factory's checks (the parser lets these through)
    ("HTTP/0.9", b"GET /x\r\n\r\n", BAD_VERSION),
    ("HTTP/2.0 on an HTTP/1 port", req("GET / HTTP/2.0"), BAD_VERSION),
    (
        "coding before chunked",
        req("POST / HTTP/1.1", "Transfer-Encoding: foo, chunked", body=b"0\r\n\r\n"),
        TRANSFER_CODING,
    ),
    (
        "chunked in HTTP/1.0",
        req("POST / HTTP/1.0", "Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        BAD_FRAMING,
    ),
    (
        "100 KiB in few headers",
        req("GET / HTTP/1.1", *(f"X-H{i}: {'v' * 1000}" for i in range(100))),
        HEADERS_TOO_LARGE,
    ),
]


@pytest.mark.parametrize(("name", "data", "refusal"), CASES, ids=[c[0] for c in CASES])
async def test_malformed_requests(serve, caplog, name, data, refusal):
    caplog.set_level(logging.DEBUG)
    srv = await serve()
    reply = await exchange(srv.port, data)
    assert reply.status == refusal.status, reply
    assert not reply.status_line.startswith("HTTP/0.9")
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["connection"] == "close"
    assert reply.headers["server"] == "gatewayd"
    err = reply.json()
    assert err["code"] == refusal.reason
    assert err["message"] == refusal.message
    assert len(err["request_id"]) == 32 and err["request_id"] == reply.headers["x-request-id"]
    assert not srv.handled
    assert count(srv, refusal.reason) == 1
    # Nothing of the request in the reply or the log; no aiohttp traceback.
    assert SECRET.encode() not in reply.body
    records = [r for r in caplog.records if r.name.startswith(("aiohttp", "gatewayd"))]
    assert not [r for r in records if r.name.startswith("aiohttp")]
    assert [(r.name, r.levelno, r.getMessage()) for r in records] == [
        ("gatewayd.protocol", logging.INFO, "protocol error")
    ]
    line = records[0]
    assert (line.status, line.reason, line.client_ip) == (
        refusal.status,
        refusal.reason,
        "127.0.0.1",
    )
    assert line.exc_info is None and SECRET not in caplog.text


def test_every_message_entry_has_a_case():
    covered = {r for _, _, r in CASES}
    assert {refusal for _, _, refusal in MESSAGES} <= covered


async def test_normal_requests_pass(serve):
    srv = await serve()
    for data in (req("GET / HTTP/1.1"), b"GET / HTTP/1.0\r\n\r\n", req("GET / HTTP/1.1", "X-A: b")):
        reply = await exchange(
            srv.port, data.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        )
        assert reply.status == 200 and reply.body == b"ok"
    chunked = req(
        "POST / HTTP/1.1", "Transfer-Encoding: Chunked", "Connection: close", body=b"0\r\n\r\n"
    )
    assert (await exchange(srv.port, chunked)).status == 200


async def test_limits_414_and_431_follow_the_configured_sizes(serve):
    srv = await serve(max_request_line=1024, max_header_size=2048, max_headers_total=4096)
    assert (await exchange(srv.port, req("GET /" + "a" * 1100 + " HTTP/1.1"))).status == 414
    assert (await exchange(srv.port, req("GET / HTTP/1.1", "X-A: " + "a" * 2100))).status == 431
    many = req("GET / HTTP/1.1", *(f"X-H{i}: {'v' * 1000}" for i in range(5)))
    assert (await exchange(srv.port, many)).status == 431
    fits = req("GET /" + "a" * 1000 + " HTTP/1.1", "X-A: " + "a" * 2000, "Connection: close")
    assert (await exchange(srv.port, fits)).status == 200


async def test_equal_line_and_field_limits_answer_431(serve):
    srv = await serve(max_request_line=4096, max_header_size=4096)
    assert (await exchange(srv.port, req("GET /" + "a" * 5000 + " HTTP/1.1"))).status == 431


async def test_handler_exception_is_a_json_500_logged_once(serve, caplog):
    async def broken(raw: web.BaseRequest) -> web.StreamResponse:
        raise RuntimeError("our bug")

    srv = await serve(broken)
    reply = await exchange(srv.port, req("GET / HTTP/1.1"))
    assert reply.status == 500
    assert reply.json()["code"] == "internal_error"
    assert reply.headers["connection"] == "close"
    assert "our bug" not in reply.body.decode() and "Traceback" not in reply.body.decode()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [(r.name, r.getMessage()) for r in errors] == [
        ("gatewayd.protocol", "request handler failed")
    ]
    assert count(srv, "bad_request") == 0


async def test_log_is_rate_limited_and_says_how_many_it_left_out(caplog):
    caplog.set_level(logging.INFO)
    logger = logging.getLogger("test.ratelimit")
    log = RateLimitedLog(logger, per_second=5)
    allowed = [log.allow() for _ in range(50)]
    assert allowed == [True] * 5 + [False] * 45
    await asyncio.sleep(1.1)  # the window ends: its summary line is written by a timer
    lines = [r for r in caplog.records if r.name == "test.ratelimit"]
    assert [(r.getMessage(), r.suppressed) for r in lines] == [
        ("protocol errors not logged (rate limit)", 45)
    ]
    assert log.allow() is True  # a new window
    log.close()


async def test_flood_gives_bounded_log_and_full_count(serve, caplog):
    caplog.set_level(logging.INFO)
    srv = await serve()
    await asyncio.gather(*(exchange(srv.port, req("G@T / HTTP/1.1")) for _ in range(100)))
    assert count(srv, "bad_method") == 100
    srv.guard.log.flush()
    lines = [r for r in caplog.records if r.name == "gatewayd.protocol"]
    assert len(lines) <= 2 * 10 + 2
    logged = sum(1 for r in lines if r.getMessage() == "protocol error")
    suppressed = sum(getattr(r, "suppressed", 0) for r in lines)
    assert logged + suppressed == 100


async def test_server_header_setting(serve):
    async def upgrade(raw: web.BaseRequest) -> web.StreamResponse:
        resp = web.Response(status=426, text="no")  # built outside our code: aiohttp's default
        return resp

    srv = await serve(upgrade, header="edge")
    ws = req("GET / HTTP/1.1", "Connection: Upgrade", "Upgrade: websocket")
    reply = await exchange(srv.port, ws.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    assert reply.status == 426 and reply.headers["server"] == "edge"
    assert (await exchange(srv.port, req("G@T / HTTP/1.1"))).headers["server"] == "edge"

    srv = await serve(ok, header="")
    plain = req("GET / HTTP/1.1", "Connection: close")
    for data in (plain, req("G@T / HTTP/1.1")):
        reply = await exchange(srv.port, data)
        assert "server" not in reply.headers, reply.headers

    # configure() (what a reload calls) applies to the next request on the running server
    srv.guard.configure(ServerConfig(header="after-reload"))
    assert (await exchange(srv.port, req("G@T / HTTP/1.1"))).headers["server"] == "after-reload"
    srv.guard.configure(ServerConfig(header=""))
    assert "server" not in (await exchange(srv.port, plain)).headers


def test_server_header_values_are_validated():
    assert ServerConfig().header == "gatewayd"
    assert ServerConfig(header="").header == ""
    for bad in ("a\r\nX-Injected: 1", " lead", "two  spaces", "tab\there"):
        with pytest.raises(ValueError):
            ServerConfig(header=bad)
