"""Big bodies stream through with flat memory, in both directions."""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import pytest
from aiohttp import web
from support import rss_bytes, upstream_url

MIB = 1024 * 1024
SIZE = 256 * MIB
CHUNK = b"0123456789abcdef" * 4096  # 64 KiB


async def upload(request: web.Request) -> web.Response:
    h = hashlib.sha256()
    n = 0
    async for chunk in request.content.iter_chunked(256 * 1024):
        h.update(chunk)
        n += len(chunk)
    return web.json_response({"bytes": n, "sha256": h.hexdigest()})


async def download(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = SIZE
    await resp.prepare(request)
    for _ in range(SIZE // len(CHUNK)):
        await resp.write(CHUNK)
    await resp.write_eof()
    return resp


class PeakRSS:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes(self.pid))
            await asyncio.sleep(0.02)

    def __enter__(self) -> PeakRSS:
        self._task = asyncio.create_task(self._sample())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


@pytest.mark.slow
async def test_256_mib_upload_and_download_with_flat_memory(gateway, backend, config):
    app = web.Application(client_max_size=0)
    app.router.add_post("/up", upload)
    app.router.add_get("/down", download)
    srv = await backend(app)
    gw = await gateway(
        config(
            upstreams={"big": {"targets": [upstream_url(srv)]}},
            routes=[{"name": "big", "match": {"path": "/"}, "upstream": "big"}],
        )
    )
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
        async with s.get(gw.url + "/down") as r:  # warm up the pools
            await r.content.read(1)
        base = rss_bytes(gw.pid)

        async def body():
            for _ in range(SIZE // len(CHUNK)):
                yield CHUNK

        expected = hashlib.sha256()
        for _ in range(SIZE // len(CHUNK)):
            expected.update(CHUNK)
        with PeakRSS(gw.pid) as up_rss:
            async with s.post(
                gw.url + "/up", data=body(), headers={"Content-Length": str(SIZE)}
            ) as r:
                result = await r.json()
        assert result == {"bytes": SIZE, "sha256": expected.hexdigest()}

        got = hashlib.sha256()
        n = 0
        with PeakRSS(gw.pid) as down_rss:
            async with s.get(gw.url + "/down") as r:
                assert r.status == 200
                async for chunk in r.content.iter_chunked(MIB):
                    got.update(chunk)
                    n += len(chunk)
        assert n == SIZE and got.hexdigest() == expected.hexdigest()
    growth = max(up_rss.peak, down_rss.peak) - base
    print(f"RSS base {base / MIB:.1f} MiB, growth {growth / MIB:.1f} MiB")
    assert growth < 50 * MIB, f"RSS grew by {growth / MIB:.1f} MiB"


@pytest.mark.parametrize(("read_buffer", "bound_mib"), [(None, 80), ("64KiB", 20)])
async def test_clients_that_stop_reading_hold_bounded_memory_and_slow_the_target(
    gateway, config, read_buffer, bound_mib
):
    """20 clients ask for 64 MiB each and then read nothing. The gateway holds a few times its
    ``pool.read_buffer`` per response (512 KiB by default) and stops reading from the target,
    so the target's writes stall too (once the kernel's socket buffers fill) instead of the
    gateway buffering 1.25 GiB."""
    clients, size = 20, 64 * MIB
    sent: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        index = len(sent)
        sent.append(0)
        try:
            while sent[index] < size:
                writer.write(CHUNK)
                sent[index] += len(CHUNK)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    streams: list[asyncio.StreamWriter] = []
    pool = {"read_buffer": read_buffer} if read_buffer else {}
    try:
        gw = await gateway(
            config(
                upstreams={"big": {"targets": [f"http://127.0.0.1:{port}"], "pool": pool}},
                routes=[{"name": "big", "match": {"path": "/"}, "upstream": "big"}],
            )
        )
        host, gw_port = gw.url.removeprefix("http://").split(":")
        base = rss_bytes(gw.pid)
        with PeakRSS(gw.pid) as rss:
            for _ in range(clients):
                _, w = await asyncio.open_connection(host, int(gw_port))
                w.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
                streams.append(w)
            # Wait until every target connection has stalled (no progress for 0.5 s).
            before = -1
            for _ in range(40):
                await asyncio.sleep(0.5)
                if len(sent) == clients and sum(sent) == before:
                    break
                before = sum(sent)
        growth = rss.peak - base
        stalled = sum(sent)
        print(f"RSS growth {growth / MIB:.1f} MiB; target sent {stalled / MIB:.0f} MiB in all")
        assert len(sent) == clients
        assert growth < bound_mib * MIB, f"RSS grew by {growth / MIB:.1f} MiB"
        # What left the target sits in the kernel's socket buffers and the gateway's read
        # buffers; far from the 1,280 MiB asked for.
        assert stalled < clients * 24 * MIB
        assert all(n < size for n in sent)
    finally:
        for w in streams:
            w.close()
        server.close()
        await server.wait_closed()
