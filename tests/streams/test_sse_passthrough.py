"""Proxied Server-Sent Events: no buffering, idle (not total) timeout, prompt disconnects."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from aiohttp import web
from streams_support import SSEReader, upstream_url


class SseBackend:
    """Emits an event every ``interval`` with its emission time; records when the client
    (the gateway) went away."""

    def __init__(self, interval: float = 0.1, count: int = 1000, stall_after: int | None = None):
        self.interval = interval
        self.count = count
        self.stall_after = stall_after
        self.gone_at: float | None = None
        self.app = web.Application()
        self.app.router.add_get("/stream", self.stream)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        try:
            for i in range(self.count):
                if self.stall_after is not None and i == self.stall_after:
                    await asyncio.sleep(3600)
                data = json.dumps({"seq": i, "emitted": time.time()})
                await resp.write(f"id: {i}\nevent: tick\ndata: {data}\n\n".encode())
                await asyncio.sleep(self.interval)
        except (ConnectionError, asyncio.CancelledError):
            self.gone_at = time.time()
            raise
        await resp.write_eof()
        return resp


def sse_config(config: Any, srv: Any, timeouts: dict[str, str] | None = None) -> dict[str, Any]:
    route: dict[str, Any] = {"name": "sse", "match": {"path": "/"}, "upstream": "sse"}
    if timeouts:
        route["timeouts"] = timeouts
    return config(upstreams={"sse": {"targets": [upstream_url(srv)]}}, routes=[route])


async def test_each_event_reaches_the_client_within_50ms(gateway, backend, config):
    src = SseBackend(interval=0.1, count=30)
    gw = await gateway(sse_config(config, await backend(src.app)))
    delays = []
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/stream") as r:
        assert r.status == 200
        reader = SSEReader(r)
        for i in range(30):
            msg = await reader.next(timeout=5)
            delays.append(time.time() - msg.json()["emitted"])
            assert (msg.event, msg.id, msg.json()["seq"]) == ("tick", str(i), i)
    ms = sorted(d * 1000 for d in delays)
    print(f"SSE pass-through delay: max {ms[-1]:.1f} ms, median {ms[len(ms) // 2]:.1f} ms")
    assert max(delays) <= 0.050, delays


async def test_client_disconnect_reaches_the_upstream_within_a_second(gateway, backend, config):
    src = SseBackend(interval=0.1)
    gw = await gateway(sse_config(config, await backend(src.app)))
    async with aiohttp.ClientSession() as s:
        r = await s.get(gw.url + "/stream")
        reader = SSEReader(r)
        await reader.collect(3)
        left = time.time()
        r.close()  # drop the connection mid-stream
    for _ in range(40):
        if src.gone_at is not None:
            break
        await asyncio.sleep(0.05)
    assert src.gone_at is not None, "the upstream never saw the client go"
    assert src.gone_at - left < 1.0


async def test_long_streams_are_governed_by_the_idle_timeout_not_the_total(
    gateway, backend, config
):
    src = SseBackend(interval=0.1, count=25)  # 2.5 s, more than the total timeout
    stalled = SseBackend(interval=0.1, stall_after=3)
    cfg = sse_config(config, await backend(src.app), {"total": "1s", "read": "700ms"})
    cfg["upstreams"]["stall"] = {"targets": [upstream_url(await backend(stalled.app))]}
    cfg["routes"].append(
        {
            "name": "stall",
            "match": {"path": "/stall"},
            "upstream": "stall",
            "strip_prefix": True,
            "timeouts": {"total": "10s", "read": "700ms"},
        }
    )
    gw = await gateway(cfg)
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/stream") as r:
            msgs = await SSEReader(r).collect(25)
            assert [m.json()["seq"] for m in msgs] == list(range(25))
        async with s.get(gw.url + "/stall/stream") as r:
            reader = SSEReader(r)
            await reader.collect(3)
            started = time.monotonic()
            try:
                await reader.next(timeout=5)
                raise AssertionError("an event after the stall")
            except (EOFError, aiohttp.ClientPayloadError):
                pass
            assert 0.5 < time.monotonic() - started < 2.0  # cut after the read (idle) timeout
