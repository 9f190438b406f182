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
