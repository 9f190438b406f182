"""Hostile input against the real daemon (raw sockets on 127.0.0.1): malformed requests and
request smuggling get the JSON error body with a request id and the right status, nothing of
the request shows in the reply or the log, the daemon keeps serving; slowloris clients are
cut, a client that never reads costs bounded memory, floods give a bounded log and a full
count; 405 with Allow; the Server header on every kind of response."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from support import Daemon, rss_bytes, upstream_url

SECRET = "hostile-test-secret-" + os.urandom(8).hex()


@dataclass
class Reply:
    status_line: str
    headers: dict[str, str]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split()[1])


def parse(data: bytes) -> Reply:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(lines[0], headers, body)


def address(gw: Daemon) -> tuple[str, int]:
    host, port = gw.config["listen"][0]["address"].split(":")
    return host, int(port)


async def exchange(gw: Daemon, data: bytes, timeout: float = 10) -> Reply:
    """Send ``data`` and read until the daemon closes the connection."""
    reader, writer = await asyncio.open_connection(*address(gw))
    try:
        writer.write(data)
        await writer.drain()
        got = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    assert got, "the daemon closed without a reply"
    return parse(got)


async def head_of(gw: Daemon, data: bytes) -> Reply:
    """Send ``data`` and read one response head (the connection may stay open)."""
    reader, writer = await asyncio.open_connection(*address(gw))
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    return parse(head)


async def echo(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Upgrade", "").lower() == "websocket":
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws
    return web.json_response(
        {"path": request.raw_path, "method": request.method},
        headers={"Server": "backend/9.9.9"},
    )


def backend_app(sent: list[int]) -> web.Application:
    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 1024 * 1024 * 1024
        await resp.prepare(request)
        chunk = b"\0" * (1024 * 1024)
        for _ in range(1024):
            await resp.write(chunk)
            sent[0] += len(chunk)
        return resp

    async def read(request: web.Request) -> web.Response:
        return web.json_response({"len": len(await request.read())})

    app = web.Application()
    app.router.add_get("/big", big)
    app.router.add_post("/read", read)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def hostile_config(config, url: str, **server) -> dict:
    return config(
        server={"drain_timeout": "2s", "keepalive_timeout": "1s", **server},
        upstreams={"api": {"targets": [url], "timeouts": {"read": "5s", "connect": "1s"}}},
        routes=[
            {
                "name": "writes",
                "match": {"path": "/items", "methods": ["POST", "PUT"]},
                "upstream": "api",
            },
            {"name": "reads", "match": {"path": "/items", "methods": ["GET"]}, "upstream": "api"},
            {
                "name": "other",
                "match": {"path": "/other", "methods": ["DELETE"]},
                "upstream": "api",
            },
            {"name": "open", "match": {"path": "/open"}, "upstream": "api"},
            {"name": "api", "match": {"path": "/", "methods": ["GET", "POST"]}, "upstream": "api"},
        ],
    )


async def start(gateway, backend, config, **server) -> tuple[Daemon, list[int]]:
    sent = [0]
    srv = await backend(backend_app(sent))
    return await gateway(hostile_config(config, upstream_url(srv), **server)), sent


def req(line: str, *headers: str, body: bytes = b"") -> bytes:
    return ("\r\n".join([line, "Host: x", *headers]) + "\r\n\r\n").encode("latin-1") + body


BEARER = "Authorization: Bearer " + SECRET + "x" * 20 * 1024
MALFORMED: list[tuple[str, bytes, int]] = [
    ("20 KiB header with a bearer token", req("GET / HTTP/1.1", BEARER), 431),
    ("20 KiB request line", req(f"GET /{SECRET}{'a' * 20 * 1024} HTTP/1.1"), 414),
    (
        "100 KiB of headers in many lines",
        req("GET / HTTP/1.1", *(f"X-H{i}: {SECRET}{'v' * 900}" for i in range(100))),
        431,
    ),
    (
        "too many header lines",
        req("GET / HTTP/1.1", *(f"X-{i}: {SECRET}" for i in range(300))),
        431,
    ),
    ("HTTP/0.9", f"GET /{SECRET}\r\n\r\n".encode(), 505),
    ("bad version", req(f"GET /{SECRET} HTTP/1.7"), 505),
    ("HTTP/2.0 on an HTTP/1 port", req(f"GET /{SECRET} HTTP/2.0"), 505),
    ("bad method", req(f"G{SECRET}@T / HTTP/1.1"), 400),
    ("NUL in a header", req("GET / HTTP/1.1", f"X-A: {SECRET}\x00"), 400),
    ("NUL in the target", req(f"GET /{SECRET}\x00 HTTP/1.1"), 400),
    ("space in the target", req(f"GET /{SECRET} x HTTP/1.1"), 400),
    ("unknown Transfer-Encoding", req("POST / HTTP/1.1", f"Transfer-Encoding: {SECRET}"), 501),
    (
        "a coding before chunked",
        req("POST / HTTP/1.1", "Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"),
        501,
    ),
    # request smuggling
    (
        "CL + TE",
        req(
            "POST / HTTP/1.1", "Content-Length: 6", "Transfer-Encoding: chunked", body=b"0\r\n\r\nG"
        ),
        400,
    ),
    (
        "TE + CL",
        req(
            "POST / HTTP/1.1", "Transfer-Encoding: chunked", "Content-Length: 6", body=b"0\r\n\r\nG"
        ),
        400,
    ),
    (
        "duplicate Content-Length",
        req("POST / HTTP/1.1", "Content-Length: 1", "Content-Length: 6", body=b"GET / "),
        400,
    ),
    ("obs-fold", req("GET / HTTP/1.1", "X-A: a", f" {SECRET}"), 400),
    ("bare LF", f"GET / HTTP/1.1\nHost: x\nX-A: {SECRET}\n\n".encode(), 400),
    (
        "chunked in HTTP/1.0",
        req("POST / HTTP/1.0", "Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        400,
    ),
]


async def assert_serving(gw: Daemon) -> None:
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/ok") as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["path"] == "/ok"


async def test_malformed_requests_and_smuggling(gateway, backend, config):
    gw, _ = await start(gateway, backend, config)
    for name, data, status in MALFORMED:
        reply = await exchange(gw, data)
        assert reply.status == status, (name, reply)
        assert not reply.status_line.startswith("HTTP/0.9"), name
        assert reply.headers["content-type"] == "application/json", name
        assert reply.headers["connection"] == "close", name
        assert reply.headers["server"] == "gatewayd", name
        err = json.loads(reply.body)["error"]
        assert err["request_id"] == reply.headers["x-request-id"] and len(err["request_id"]) == 32
        assert SECRET not in reply.body.decode(), name
        assert SECRET not in json.dumps(reply.headers), name
        await assert_serving(gw)
    await asyncio.sleep(1.2)  # the rate limiter's summary of the lines it left out
    logs = gw.logs()
    assert SECRET not in logs
    assert "Traceback" not in logs and "aiohttp.server" not in logs
    lines = [json.loads(line) for line in logs.splitlines() if '"gatewayd.protocol"' in line]
    logged = [line for line in lines if line["message"] == "protocol error"]
    assert 0 < len(logged) <= len(MALFORMED)
    assert len(logged) + sum(line.get("suppressed", 0) for line in lines) == len(MALFORMED)
    assert {line["client_ip"] for line in logged} == {"127.0.0.1"}
    assert all(line["level"] in ("INFO", "WARNING") for line in lines)
    counts = {
        reason: await gw.metric("gatewayd_protocol_errors_total", reason=reason)
        for reason in (
            "header_too_long",
            "uri_too_long",
            "headers_too_large",
            "bad_version",
            "bad_method",
            "transfer_encoding",
            "bad_framing",
        )
    }
    assert counts == {
        "header_too_long": 1,
        "uri_too_long": 1,
        "headers_too_large": 2,
        "bad_version": 3,
        "bad_method": 1,
        "transfer_encoding": 2,
        "bad_framing": 4,
    }


async def test_a_flood_is_counted_in_full_and_logged_in_bounded_lines(gateway, backend, config):
    gw, _ = await start(gateway, backend, config)
    sem = asyncio.Semaphore(20)

    async def one() -> None:
        async with sem:
            reply = await exchange(gw, req(f"GET /{SECRET} HTTP/1.7"))
            assert reply.status == 505

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(200)))
    await asyncio.sleep(1.2)  # the rate limiter's summary line for the last second
    elapsed = time.monotonic() - started
    assert await gw.metric("gatewayd_protocol_errors_total", reason="bad_version") == 200
    lines = [json.loads(line) for line in gw.logs().splitlines() if "protocol error" in line]
    logged = [line for line in lines if line["message"] == "protocol error"]
    summaries = [line for line in lines if line["message"].startswith("protocol errors not logged")]
    assert len(logged) <= 10 * (elapsed + 1)
    assert len(logged) + sum(line["suppressed"] for line in summaries) == 200
    assert SECRET not in gw.logs()
    await assert_serving(gw)


async def test_slowloris_is_closed_after_keepalive_timeout(gateway, backend, config):
    gw, _ = await start(gateway, backend, config)  # keepalive_timeout: 1s
    reader, writer = await asyncio.open_connection(*address(gw))
    started = time.monotonic()
    closed_after = None
    try:
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                if await asyncio.wait_for(reader.read(1), 0.2) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                pass
    except ConnectionError:
        closed_after = time.monotonic() - started
    finally:
        writer.close()
    assert closed_after is not None, "a client trickling its headers was never cut"
    assert 0.9 <= closed_after < 4
    await assert_serving(gw)


async def test_a_client_that_never_reads_costs_bounded_memory(gateway, backend, config):
    gw, sent = await start(gateway, backend, config)
    await assert_serving(gw)
    before = rss_bytes(gw.pid)
    _, writer = await asyncio.open_connection(*address(gw))
    writer.write(req("GET /big HTTP/1.1"))
    await writer.drain()
    await asyncio.sleep(4)  # the daemon reads what it can from the backend meanwhile
    grown = rss_bytes(gw.pid) - before
    assert sent[0] < 256 * 1024 * 1024, "the backend was read without back-pressure"
    assert grown < 64 * 1024 * 1024, f"RSS grew {grown >> 20} MiB for a client that never reads"
    await assert_serving(gw)
    writer.close()


async def test_405_with_allow_when_the_method_does_not_match(gateway, backend, config):
    gw, _ = await start(gateway, backend, config)
    async with aiohttp.ClientSession() as s:
        async with s.delete(gw.url + "/items/1") as r:
            assert r.status == 405
            assert r.headers["Allow"] == "GET, HEAD, POST, PUT"  # writes + reads + api
            err = (await r.json())["error"]
            assert err["code"] == "method_not_allowed"
            assert err["request_id"] == r.headers["X-Request-ID"]
        async with s.put(gw.url + "/other") as r:
            assert r.status == 405 and r.headers["Allow"] == "DELETE, GET, HEAD, POST"
        for method, path in (("GET", "/items/1"), ("PUT", "/items"), ("DELETE", "/other/x")):
            async with s.request(method, gw.url + path) as r:
                assert r.status == 200, (method, path)
                assert (await r.json())["method"] == method
        # the catch-all route's methods count wherever its path matches
        async with s.delete(gw.url + "/anything") as r:
            assert r.status == 405 and r.headers["Allow"] == "GET, HEAD, POST"
        # a route without a method list takes any method: no 405 there
        async with s.delete(gw.url + "/open/x") as r:
            assert r.status == 200


async def test_targets_get_a_defined_answer(gateway, backend, config):
    gw, _ = await start(gateway, backend, config)
    cases = [
        ("GET http://other/x HTTP/1.1", 400, None),  # absolute form: refused, never proxied
        ("GET //a//b HTTP/1.1", 200, "/a/b"),
        ("GET /a/../b HTTP/1.1", 200, "/b"),
        ("GET /a/%2e%2e/b HTTP/1.1", 200, "/b"),
        ("GET /../../etc HTTP/1.1", 200, "/etc"),
        ("GET /a%00b HTTP/1.1", 400, None),
        ("OPTIONS * HTTP/1.1", 400, None),
        ("CONNECT other:443 HTTP/1.1", 400, None),
    ]
    for line, status, path in cases:
        reply = await exchange(gw, req(line, "Connection: close"))
        assert reply.status == status, (line, reply)
        assert reply.headers["content-type"].startswith("application/json")
        if path is not None:
            assert json.loads(reply.body)["path"] == path, line
        else:
            assert json.loads(reply.body)["error"]["request_id"] == reply.headers["x-request-id"]


WS_KEY = base64.b64encode(b"0123456789abcdef").decode()


def handshake(path: str) -> bytes:
    return req(
        f"GET {path} HTTP/1.1",
        "Connection: Upgrade",
        "Upgrade: websocket",
        f"Sec-WebSocket-Key: {WS_KEY}",
        "Sec-WebSocket-Version: 13",
    )


async def server_headers(gw: Daemon) -> dict[str, str | None]:
    """The Server header of each kind of response, None when absent."""
    got: dict[str, str | None] = {}
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/items") as r:
            got["proxied"] = r.headers.get("Server")
        async with s.delete(gw.url + "/items") as r:
            assert r.status == 405
            got["local error"] = r.headers.get("Server")
        async with s.get(gw.url + "/_relay/connect") as r:
            assert r.status == 426
            got["relay refusal"] = r.headers.get("Server")
        async with s.get(gw.admin_url + "/_health") as r:
            got["admin"] = r.headers.get("Server")
    reply = await head_of(gw, handshake("/ws"))
    assert reply.status == 101, reply
    got["websocket"] = reply.headers.get("server")
    reply = await head_of(gw, handshake("/_relay/connect"))
    assert reply.status == 101, reply
    got["relay"] = reply.headers.get("server")
    got["protocol error"] = (await exchange(gw, req("GET / HTTP/1.7"))).headers.get("server")
    return got


async def test_server_header_everywhere_and_on_reload(gateway, backend, config):
    gw, _ = await start(gateway, backend, config)
    got = await server_headers(gw)
    assert got == dict.fromkeys(got, "gatewayd"), got

    cfg = gw.config
    cfg["server"]["header"] = "edge"
    gw.write_config(cfg)
    await gw.reload()
    got = await server_headers(gw)
    assert got == dict.fromkeys(got, "edge"), got

    cfg["server"]["header"] = ""
    gw.write_config(cfg)
    await gw.reload()
    got = await server_headers(gw)
    assert got == dict.fromkeys(got), got  # none at all: not ours, not aiohttp's


async def test_a_broken_chunked_body_mid_request(gateway, backend, config):
    """The framing breaks after the headers were accepted, while the body is being forwarded.
    aiohttp's parser queues its error behind the request instead of failing the body: the
    request ends at the upstream's total timeout (504), then the connection closes. No
    traceback, nothing of the request in the log, the daemon serves on."""
    srv = await backend(backend_app([0]))
    cfg = hostile_config(config, upstream_url(srv))
    cfg["upstreams"]["api"]["timeouts"]["total"] = "2s"
    gw = await gateway(cfg)
    reader, writer = await asyncio.open_connection(*address(gw))
    writer.write(req("POST /read HTTP/1.1", "Transfer-Encoding: chunked") + b"5\r\nhello\r\n")
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.write(f"zz{SECRET}\r\n\r\n".encode())
    await writer.drain()
    started = time.monotonic()
    got = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert time.monotonic() - started < 5
    reply = parse(got)
    assert reply.status == 504 and reply.headers["content-type"] == "application/json"
    rest = await asyncio.wait_for(reader.read(), 15)  # aiohttp lingers for the body (10 s)
    writer.close()
    assert SECRET not in (got + rest).decode("latin-1")
    await assert_serving(gw)
    logs = gw.logs()
    assert SECRET not in logs and "Traceback" not in logs
