"""The forwarder against real backends: headers, errors, balancing, paths, cancellation."""

from __future__ import annotations

import asyncio
import collections
import json

import aiohttp
from aiohttp import web
from support import upstream_url


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "path": request.raw_path,
            "method": request.method,
            "headers": [[k, v] for k, v in request.headers.items()],
            "len": len(body),
            "port": request.transport.get_extra_info("sockname")[1],
        },
        headers={"Connection": "keep-alive, X-Hop", "X-Hop": "secret", "Keep-Alive": "timeout=5"},
    )


def echo_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def one_route(config, url: str, **route) -> dict:
    return config(
        upstreams={"api": {"targets": [url], "timeouts": {"read": "1s", "connect": "1s"}}},
        routes=[{"name": "api", "match": {"path": "/"}, "upstream": "api", **route}],
    )


async def raw_request(url: str, request: bytes) -> tuple[int, bytes]:
    """Send bytes exactly as given (no client-side path normalisation)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_forwarded_headers_hop_by_hop_and_request_id(gateway, backend, config):
    srv = await backend(echo_app())
    gw = await gateway(one_route(config, upstream_url(srv)))
    headers = {
        "X-Forwarded-For": "203.0.113.9",
        "Connection": "keep-alive, X-Secret-Hop",
        "X-Secret-Hop": "1",
        "TE": "trailers",
        "X-Request-ID": "abc-123",
    }
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/x", headers=headers) as r:
        data = await r.json()
        assert r.status == 200
        assert r.headers["X-Request-ID"] == "abc-123"
        assert "X-Hop" not in r.headers and "Keep-Alive" not in r.headers
        assert r.headers["Via"] == "1.1 gatewayd"
    got = {k.lower(): v for k, v in data["headers"]}
    # This listener trusts no proxy: the client's own X-Forwarded-For is dropped (tests/identity/
    # test_client_ip.py covers trusted proxies).
    assert got["x-forwarded-for"] == "127.0.0.1"
    assert got["x-forwarded-proto"] == "http"
    assert got["x-forwarded-host"] == gw.url.removeprefix("http://")
    assert got["via"] == "1.1 gatewayd"
    assert got["x-request-id"] == "abc-123"
    assert "x-secret-hop" not in got and "te" not in got
    assert got["host"] == f"127.0.0.1:{srv.port}"

    # A forged, oversized or odd request id is replaced with a fresh one.
    async with (
        aiohttp.ClientSession() as s,
        s.get(gw.url + "/x", headers={"X-Request-ID": "bad id\twith spaces"}) as r,
    ):
        data = await r.json()
        rid = r.headers["X-Request-ID"]
    assert (
        len(rid) == 32 and dict((k.lower(), v) for k, v in data["headers"])["x-request-id"] == rid
    )


async def test_dot_segments_and_encoded_dots_match_the_normalised_route(gateway, backend, config):
    admin, public = await backend(echo_app()), await backend(echo_app())
    gw = await gateway(
        config(
            upstreams={
                "admin": {"targets": [upstream_url(admin)]},
                "public": {"targets": [upstream_url(public)]},
            },
            routes=[
                {"name": "admin", "match": {"path": "/admin"}, "upstream": "admin"},
                {"name": "public", "match": {"path": "/a/"}, "upstream": "public"},
            ],
        )
    )
    for raw in (b"/a/../admin", b"/a/%2e%2e/admin", b"/a/%2E%2E/admin", b"//a/..//admin"):
        status, body = await raw_request(
            gw.url, b"GET " + raw + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert status == 200, raw
        data = json.loads(body)
        assert data["port"] == admin.port, raw  # matched as /admin, not as /a/...
        assert data["path"] == "/admin", raw  # and forwarded normalised
    status, body = await raw_request(
        gw.url, b"GET /a/%zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status == 400 and json.loads(body)["error"]["code"] == "bad_request"


async def test_no_route_is_a_json_404(gateway, backend, config):
    srv = await backend(echo_app())
    cfg = one_route(config, upstream_url(srv))
    cfg["routes"][0]["match"] = {"path": "/only/"}
    gw = await gateway(cfg)
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/elsewhere") as r:
        assert r.status == 404
        body = await r.json()
    assert body["error"]["code"] == "no_route"
    assert body["error"]["request_id"] == r.headers["X-Request-ID"]


async def test_connection_refused_is_502_and_slow_backend_is_504(gateway, backend, config):
    from support import free_port

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/slow", slow)
    srv = await backend(app)
    gw = await gateway(
        config(
            upstreams={
                "dead": {"targets": [f"http://127.0.0.1:{free_port()}"]},
                "slow": {"targets": [upstream_url(srv)], "timeouts": {"read": "300ms"}},
            },
            routes=[
                {"name": "dead", "match": {"path": "/dead"}, "upstream": "dead"},
                {"name": "slow", "match": {"path": "/slow"}, "upstream": "slow"},
            ],
        )
    )
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/dead") as r:
            assert r.status == 502
            assert (await r.json())["error"]["code"] == "upstream_unreachable"
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with s.get(gw.url + "/slow") as r:
            assert r.status == 504
            assert (await r.json())["error"]["code"] == "upstream_timeout"
        assert loop.time() - t0 < 2


async def test_round_robin_and_hash_balancing(gateway, backend, config):
    servers = [await backend(echo_app()) for _ in range(3)]
    urls = [upstream_url(s) for s in servers]
    gw = await gateway(
        config(
            upstreams={
                "rr": {"targets": urls},
                "h": {"targets": urls, "balance": "hash", "hash_on": "header:X-User"},
                "lc": {"targets": urls, "balance": "least_conn"},
            },
            routes=[
                {"name": "rr", "match": {"path": "/rr"}, "upstream": "rr"},
                {"name": "h", "match": {"path": "/h"}, "upstream": "h"},
                {"name": "lc", "match": {"path": "/lc"}, "upstream": "lc"},
            ],
        )
    )
    async with aiohttp.ClientSession() as s:
        ports = collections.Counter()
        for _ in range(30):
            async with s.get(gw.url + "/rr") as r:
                ports[(await r.json())["port"]] += 1
        assert sorted(ports.values()) == [10, 10, 10]
        for user in ("alice", "bob", "carol", "dave"):
            seen = set()
            for _ in range(5):
                async with s.get(gw.url + "/h", headers={"X-User": user}) as r:
                    seen.add((await r.json())["port"])
            assert len(seen) == 1, user
        seen = set()
        for _ in range(9):
            async with s.get(gw.url + "/lc") as r:
                seen.add((await r.json())["port"])
        assert len(seen) == 3  # idle targets tie, and ties rotate


async def test_client_disconnect_cancels_the_upstream_request(gateway, backend, config):
    cancelled = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            for _ in range(100):
                await resp.write(b"x" * 1024)
                await asyncio.sleep(0.05)
        except (asyncio.CancelledError, ConnectionError):
            cancelled.set()
            raise
        return resp

    app = web.Application(handler_args={"handler_cancellation": True})
    app.router.add_get("/stream", stream)
    srv = await backend(app)
    gw = await gateway(one_route(config, upstream_url(srv)))
    async with aiohttp.ClientSession() as s:
        r = await s.get(gw.url + "/stream")
        await r.content.read(2048)
        r.close()  # the client goes away mid-stream
    await asyncio.wait_for(cancelled.wait(), 2)


async def test_headers_plugin_and_request_limits(gateway, backend, config):
    srv = await backend(echo_app())
    gw = await gateway(
        one_route(
            config,
            upstream_url(srv),
            plugins=[
                {"request_limits": {"max_body": "1KiB", "max_header_size": "4KiB"}},
                {
                    "headers": {
                        "request": {"set": {"X-Env": "test"}, "remove": ["X-Debug"]},
                        "response": {"add": {"X-Served-By": "gatewayd"}, "remove": ["Server"]},
                    }
                },
            ],
        )
    )
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/p", data=b"x" * 1000, headers={"X-Debug": "1"}) as r:
            assert r.status == 200
            data = await r.json()
            assert r.headers["X-Served-By"] == "gatewayd"
        got = {k.lower(): v for k, v in data["headers"]}
        assert got["x-env"] == "test" and "x-debug" not in got and data["len"] == 1000
        async with s.post(gw.url + "/p", data=b"x" * 5000) as r:
            assert r.status == 413
            assert (await r.json())["error"]["code"] == "body_too_large"

        async def chunks():
            for _ in range(10):
                yield b"y" * 500

        async with s.post(gw.url + "/p", data=chunks()) as r:  # chunked, no Content-Length
            assert r.status == 413
        async with s.get(gw.url + "/p", headers={"X-Big": "z" * 5000}) as r:
            assert r.status == 431


async def test_metrics_and_access_log(gateway, backend, config):
    srv = await backend(echo_app())
    gw = await gateway(one_route(config, upstream_url(srv)))
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.get(gw.url + "/m/secret-path-123") as r:
                assert r.status == 200
    assert await gw.metric("gatewayd_requests_total", route="api", status="200") == 3
    async with aiohttp.ClientSession() as s, s.get(gw.admin_url + "/metrics") as r:
        text = await r.text()
    assert "gatewayd_request_duration_seconds_bucket" in text
    assert 'gatewayd_upstream_duration_seconds_count{upstream="api"} 3.0' in text
    assert "secret-path-123" not in text  # routes label metrics, raw paths never do
    lines: list[dict] = []
    for _ in range(40):  # access lines are written in batches, at most 200 ms apart
        lines = [json.loads(line) for line in gw.logs().splitlines() if '"access"' in line]
        if len(lines) >= 3:
            break
        await asyncio.sleep(0.05)
    assert len(lines) == 3
    entry = lines[0]
    for field in (
        "time",
        "request_id",
        "client",
        "method",
        "path",
        "route",
        "upstream",
        "target",
        "status",
        "bytes_in",
        "bytes_out",
        "duration_ms",
    ):
        assert field in entry, field
    assert entry["route"] == "api" and entry["status"] == 200


async def test_slow_and_idle_clients_are_cut_off(gateway, backend, config):
    srv = await backend(echo_app())
    cfg = one_route(config, upstream_url(srv))
    cfg["server"]["keepalive_timeout"] = "1s"
    gw = await gateway(cfg)
    host, port = gw.url.removeprefix("http://").split(":")
    loop = asyncio.get_running_loop()

    # A client that trickles its headers a byte at a time never gets to hold the connection.
    reader, writer = await asyncio.open_connection(host, int(port))
    started = loop.time()
    closed_after = None
    for byte in b"GET /x HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
            if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                closed_after = loop.time() - started
                break
        except TimeoutError:
            continue
        except ConnectionError:
            closed_after = loop.time() - started
            break
    writer.close()
    assert closed_after is not None and closed_after < 3, closed_after

    # An idle keep-alive connection is closed too.
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    writer.close()


async def test_a_pooled_connection_closed_by_the_target_is_retried_for_idempotent_methods(
    gateway, config
):
    """The target answers the first request on each connection and drops the connection on the
    second without answering (a keep-alive race). A GET is sent again on a new connection; a
    POST, which the target may have acted on, is not: 502."""
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                seen.append(head.split(b" ", 1)[0])
                if served:
                    break  # the second request on this connection: drop it
                served += 1
                body = b"fresh"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gw = await gateway(one_route(config, f"http://127.0.0.1:{port}"))
        async with aiohttp.ClientSession() as s:
            for _ in range(3):
                async with s.get(gw.url + "/x") as r:
                    assert r.status == 200
                    assert await r.text() == "fresh"
            async with s.post(gw.url + "/x") as r:
                assert r.status == 502
        # GET: 1 + (dropped, retried) + (dropped, retried); POST: dropped, not retried
        assert seen == [b"GET", b"GET", b"GET", b"GET", b"GET", b"POST"]
    finally:
        server.close()
        await server.wait_closed()
