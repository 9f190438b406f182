"""The live request tail: ``GET /dashboard/tail/stream`` (SSE), one line per finished request.

Filtered on the server (``?route=``, ``?status=2xx|3xx|4xx|5xx``, ``?min_ms=``), so a busy
gateway sends a client only what it asked for. Each client has a bounded queue
(:data:`QUEUE`): what does not fit is dropped and counted, and the count is sent as a
``dropped`` event. The client's tap (``services.taps``) is registered only while it is
connected: with no tail open the request path pays one attribute read. A line holds the
method, the path (no query string: it may carry credentials), route, status, latency, tenant
and key id, never a header value.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from gatewayd.chain.api import RequestContext

QUEUE = 256
MAX_CLIENTS = 8
MAX_PATH = 256
HEARTBEAT = 15.0
CHECK = 1.0  # how often a quiet tail looks whether its client is still there
CLASSES = {"2xx": 2, "3xx": 3, "4xx": 4, "5xx": 5}


@dataclass(frozen=True, slots=True)
class TailFilter:
    route: str | None = None
    status_class: int | None = None  # 2..5
    min_ms: float = 0.0

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> TailFilter:
        """From a query string; ``ValueError`` naming the bad parameter."""
        route = query.get("route", "").strip() or None
        status = query.get("status", "").strip().lower() or None
        if status is not None and status not in CLASSES:
            raise ValueError("status must be one of 2xx, 3xx, 4xx, 5xx")
        raw = query.get("min_ms", "").strip() or "0"
        try:
            min_ms = float(raw)
        except ValueError:
            raise ValueError("min_ms must be a number of milliseconds") from None
        if not 0 <= min_ms < 1e9:
            raise ValueError("min_ms must be a number of milliseconds")
        return cls(route, CLASSES[status] if status else None, min_ms)

    def matches(self, route: str, status: int, ms: float) -> bool:
        return (
            (self.route is None or route == self.route)
            and (self.status_class is None or status // 100 == self.status_class)
            and ms >= self.min_ms
        )


class TailClient:
    """One connected tail: the tap listener and its bounded queue."""

    def __init__(self, filter: TailFilter, limit: int = QUEUE) -> None:
        self.filter = filter
        self.limit = limit
        self.lines: deque[dict[str, Any]] = deque()
        self.dropped = 0
        self.wake = asyncio.Event()

    def __call__(self, ctx: RequestContext, status: int) -> None:
        ms = (time.monotonic() - ctx.started) * 1000
        route = ctx.route.name
        if not self.filter.matches(route, status, ms):
            return
        if len(self.lines) >= self.limit:
            self.dropped += 1
            self.wake.set()
            return
        principal = ctx.principal
        self.lines.append(
            {
                "time": time.time(),
                "method": ctx.request.method,
                "path": ctx.request.path[:MAX_PATH],
                "route": route,
                "status": status,
                "latency_ms": round(ms, 2),
                "tenant": principal.tenant if principal is not None else None,
                "key_id": principal.key_id if principal is not None else None,
                "request_id": ctx.request_id,
            }
        )
        self.wake.set()


@dataclass(slots=True)
class TailHub:
    """The open tails of one admin app (bounded by :data:`MAX_CLIENTS`)."""

    clients: int = 0


TAILS: web.AppKey[TailHub] = web.AppKey("dashboard_tails", TailHub)


async def serve(request: web.Request, taps: Any, filter: TailFilter) -> web.StreamResponse:
    """Stream finished requests matching ``filter`` until the client goes away."""
    hub = request.app[TAILS]
    client = TailClient(filter)
    resp = EventSourceResponse(ping_interval=HEARTBEAT, headers={"Cache-Control": "no-store"})
    hub.clients += 1
    taps.add(client)
    try:
        await resp.prepare(request)
        await resp.send(json.dumps({"queue": client.limit}), event="hello")
        sent_dropped = 0
        while resp.is_connected() and not gone(request):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CHECK):
                    await client.wake.wait()
            client.wake.clear()
            while client.lines:
                await resp.send(json.dumps(client.lines.popleft()), event="request")
            if client.dropped != sent_dropped:
                sent_dropped = client.dropped
                await resp.send(json.dumps({"dropped": sent_dropped}), event="dropped")
    except (ConnectionError, RuntimeError):
        pass  # the client went away
    finally:
        taps.discard(client)
        hub.clients -= 1
        if resp.prepared and resp.is_connected():
            resp.stop_streaming()
    return resp


def gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()
