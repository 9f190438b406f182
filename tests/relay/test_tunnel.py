"""End to end: a backend reachable only through `gatewayd peer`, served by the real daemon."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time

import aiohttp
import pytest
from aiohttp import web
from relay_helpers import (
    lease_connections,
    make_key,
    relay_config,
    relay_stats,
    state_dir,
    upstream_url,
    wait_for,
)

MiB = 1024 * 1024


def backend_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.raw_path,
                "headers": dict(request.headers),
                "len": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
            }
        )

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(5):
            await resp.write(f"part {i}\n".encode())
            await asyncio.sleep(0.02)
        await resp.write_eof()
        return resp

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(3):
            await resp.write(f"id: {i}\ndata: tick {i}\n\n".encode())
            await asyncio.sleep(0.1)
        await resp.write_eof()
        return resp

    async def big(request: web.Request) -> web.StreamResponse:
        size = int(request.query.get("mib", "100")) * MiB
        resp = web.StreamResponse(headers={"Content-Length": str(size)})
        await resp.prepare(request)
        chunk = b"x" * (256 * 1024)
        sent = 0
        while sent < size:
            await resp.write(chunk)
            sent += len(chunk)
        await resp.write_eof()
        return resp

    async def hang(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"started\n")
        await asyncio.sleep(60)
        return resp

    app = web.Application(client_max_size=128 * MiB)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/sse", sse)
    app.router.add_get("/big", big)
    app.router.add_get("/hang", hang)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def tunnel(tmp_path, gateway, backend, config, peer_proc):
    """A gateway, a backend and one peer holding lease ``app``; yields (gw, peer, backend url)."""
    srv = await backend(backend_app())
    gw = await gateway(relay_config(tmp_path, config))
    key, _ = await make_key(state_dir(gw), "relay:app*")
    peer = await peer_proc(gw, "app", key, upstream_url(srv))
    return gw, peer, upstream_url(srv), key


async def test_get_through_the_tunnel(tunnel):
    gw, _peer, _, _ = tunnel
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/peer/app/hello/world?x=1&y=2") as r:
            assert r.status == 200, await r.text()
            data = await r.json()
            assert data["path"] == "/hello/world?x=1&y=2"
            assert data["headers"]["X-Forwarded-For"] == "127.0.0.1"
            assert data["headers"]["X-Request-ID"] == r.headers["X-Request-ID"]
            assert r.headers.getall("Via") == ["1.1 gatewayd"]  # our hop, once
        async with s.head(gw.url + "/peer/app/x") as r:
            assert r.status == 200
        async with s.get(gw.url + "/peer/nobody/x") as r:
            assert r.status == 503
            assert (await r.json())["error"]["code"] == "upstream_unavailable"
            assert "Retry-After" in r.headers
        async with s.get(gw.url + "/peer/") as r:
            assert r.status == 404


async def test_post_64mib_body(tunnel):
    gw, _peer, _, _ = tunnel
    body = os.urandom(64 * MiB)
    async with aiohttp.ClientSession() as s, s.post(gw.url + "/peer/app/upload", data=body) as r:
        assert r.status == 200, await r.text()
        data = await r.json()
    assert data["len"] == len(body)
    assert data["sha256"] == hashlib.sha256(body).hexdigest()

    async def gen():
        for _ in range(16):
            yield b"y" * MiB

    async with aiohttp.ClientSession() as s, s.post(gw.url + "/peer/app/up", data=gen()) as r:
        assert r.status == 200
        assert (await r.json())["len"] == 16 * MiB


async def test_chunked_and_sse_responses(tunnel):
    gw, _peer, _, _ = tunnel
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/peer/app/chunked") as r:
            assert r.status == 200
            assert await r.text() == "".join(f"part {i}\n" for i in range(5))
        async with s.get(gw.url + "/peer/app/sse") as r:
            assert r.headers["Content-Type"] == "text/event-stream"
            first = await r.content.readuntil(b"\n\n")
            started = time.monotonic()
            assert first == b"id: 0\ndata: tick 0\n\n"
            rest = await r.content.read()
        # Events arrive as they are sent (streamed, not buffered until the end).
        assert time.monotonic() - started >= 0.15
        assert rest.count(b"data: tick") == 2


@pytest.mark.slow
async def test_small_requests_flow_while_a_slow_download_runs(tunnel):
    """One connection; a client reading 100 MiB slowly does not stall 100 small requests."""
    gw, _peer, _, _ = tunnel
    async with aiohttp.ClientSession() as s:
        big = await s.get(gw.url + "/peer/app/big?mib=100")
        assert big.status == 200
        await big.content.readexactly(MiB)  # the download is under way, then we read slowly

        async def small(i: int) -> float:
            t = time.monotonic()
            async with s.get(gw.url + f"/peer/app/small/{i}") as r:
                assert r.status == 200
                await r.read()
            return time.monotonic() - t

        started = time.monotonic()
        times = await asyncio.gather(*(small(i) for i in range(100)))
        assert time.monotonic() - started < 5.0, max(times)
        conns = await lease_connections(gw, "app")
        assert len(conns) == 1 and conns[0]["in_flight"] == 1  # only the download is left
        # Memory at the gateway stays bounded: it buffers at most a window, not the body.
        read = 0
        while read < 20 * MiB:
            read += len(await big.content.read(256 * 1024))
            await asyncio.sleep(0.001)
        big.close()


async def test_peer_killed_mid_stream_gives_502_and_is_forgotten(tunnel):
    gw, peer, _, _ = tunnel
    async with aiohttp.ClientSession() as s:
        waiting = asyncio.create_task(s.get(gw.url + "/peer/app/hang"))
        resp = await waiting
        assert resp.status == 200
        assert await resp.content.readline() == b"started\n"

        async def slow_request() -> int:
            async with s.post(gw.url + "/peer/app/hang2", data=b"x") as r:
                return r.status

        # A second request that waits for its headers when the peer dies.
        hanging = asyncio.create_task(s.get(gw.url + "/peer/app/hang"))
        await asyncio.sleep(0.2)
        hanging.cancel()
        headers_wait = asyncio.create_task(s.get(gw.url + "/peer/app/hang"))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        peer.kill(signal.SIGKILL)
        # The streaming response is cut off (headers were gone already).
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.content.read()
        r2 = await headers_wait
        # the hang handler sends headers at once, so this one was streaming too: cut off
        with pytest.raises(aiohttp.ClientPayloadError):
            await r2.content.read()
        elapsed = time.monotonic() - started
        assert elapsed < 1.5  # heartbeat timeout is 1 s

        async def forgotten() -> bool:
            return await lease_connections(gw, "app") == []

        await wait_for(forgotten, 3.0)
        async with s.get(gw.url + "/peer/app/x") as r:
            assert r.status == 503


async def test_requests_waiting_for_headers_get_502_when_the_peer_dies(
    tmp_path, gateway, backend, config, peer_proc
):
    async def never(request: web.Request) -> web.Response:
        await asyncio.sleep(60)
        return web.Response()

    app = web.Application()
    app.router.add_get("/{tail:.*}", never)
    srv = await backend(app)
    gw = await gateway(relay_config(tmp_path, config))
    key, _ = await make_key(state_dir(gw), "relay:app")
    peer = await peer_proc(gw, "app", key, upstream_url(srv))
    async with aiohttp.ClientSession() as s:
        pending = [asyncio.create_task(s.get(gw.url + f"/peer/app/{i}")) for i in range(5)]
        await asyncio.sleep(0.3)
        started = time.monotonic()
        peer.kill(signal.SIGKILL)
        for task in pending:
            r = await task
            assert r.status == 502
            assert (await r.json())["error"]["code"] == "upstream_error"
        assert time.monotonic() - started < 1.6
    stats = await relay_stats(gw)
    assert stats["connections"] == 0 and stats["in_flight"] == 0


async def test_two_peers_share_load_and_one_leaving_loses_nothing(tunnel, peer_proc):
    gw, _peer1, target, key = tunnel
    peer2 = await peer_proc(gw, "app", key, target)
    conns = await lease_connections(gw, "app")
    assert len(conns) == 2
    async with aiohttp.ClientSession() as s:
        for i in range(40):
            async with s.get(gw.url + f"/peer/app/{i}") as r:
                assert r.status == 200
        conns = await lease_connections(gw, "app")
        counts = sorted(c["streams_total"] for c in conns)
        assert counts[0] >= 10, counts  # both served a fair share

        stop = asyncio.Event()
        statuses: list[int] = []

        async def load() -> None:
            while not stop.is_set():
                async with s.get(gw.url + "/peer/app/x") as r:
                    statuses.append(r.status)

        workers = [asyncio.create_task(load()) for _ in range(8)]
        await asyncio.sleep(0.3)
        peer2.kill(signal.SIGTERM)  # graceful: in-flight finish, new requests go to peer1
        assert await peer2.wait(5) == 0
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*workers)
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    assert len(await lease_connections(gw, "app")) == 1


async def test_connections_survive_a_reload(tunnel):
    gw, _peer, _, _ = tunnel
    before = await lease_connections(gw, "app")
    await gw.reload()
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/peer/app/after") as r:
        assert r.status == 200
    after = await lease_connections(gw, "app")
    assert [c["id"] for c in after] == [c["id"] for c in before]


async def test_relay_upstream_by_name(tmp_path, gateway, backend, config, peer_proc):
    srv = await backend(backend_app())
    cfg = relay_config(tmp_path, config)
    cfg["upstreams"] = {"mcp": {"relay": "my-mcp", "timeouts": {"read": "5s"}}}
    cfg["routes"].append({"name": "mcp", "match": {"path": "/mcp/"}, "upstream": "mcp"})
    gw = await gateway(cfg)
    key, _ = await make_key(state_dir(gw), "relay:my-*")
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/mcp/tools") as r:
            assert r.status == 503
        await peer_proc(gw, "my-mcp", key, upstream_url(srv))
        async with s.get(gw.url + "/mcp/tools") as r:
            assert r.status == 200
            assert (await r.json())["path"] == "/mcp/tools"


async def test_sigterm_drains_then_closes_peers_with_1001(tunnel):
    gw, peer, _, _ = tunnel
    async with aiohttp.ClientSession() as s:
        slow = await s.get(gw.url + "/peer/app/chunked")
        gw.signal(signal.SIGTERM)
        assert (await slow.text()).count("part") == 5  # drained through the tunnel
    assert await gw.wait_exit(10) == 0
    await asyncio.sleep(0.3)
    assert peer.proc.poll() is None  # 1001: the peer keeps trying to reconnect
    assert "1001" in peer.logs()


async def test_the_chain_runs_in_front_of_the_relay(tmp_path, gateway, backend, config, peer_proc):
    srv = await backend(backend_app())
    cfg = relay_config(tmp_path, config)
    cfg["routes"][0]["plugins"] = [
        {"key_auth": {}},
        {"headers": {"request": {"set": {"X-Env": "test"}}}},
    ]
    gw = await gateway(cfg)
    peer_key, _ = await make_key(state_dir(gw), "relay:app")
    client_key, _ = await make_key(state_dir(gw), "read", tenant="acme")
    await peer_proc(gw, "app", peer_key, upstream_url(srv))
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/peer/app/x") as r:
            assert r.status == 401
        auth = {"Authorization": f"Bearer {client_key}"}
        async with s.get(gw.url + "/peer/app/x", headers=auth) as r:
            assert r.status == 200
            seen = (await r.json())["headers"]
    assert seen["X-Env"] == "test"
    assert "Authorization" not in seen  # key_auth hides the credential from the backend
