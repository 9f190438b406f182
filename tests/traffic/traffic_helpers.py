"""Helpers for the traffic tests: backends that count what reaches them, a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Counting:
    """An aiohttp app answering every path with ``handler`` and counting the hits."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.hits = 0
        self.paths: list[str] = []
        self.handler = handler or self.ok
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    async def ok(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path != "/healthz":
            self.hits += 1
            self.paths.append(request.path_qs)
        return await self.handler(request)


def route(name: str = "api", upstream: str = "api", path: str = "/", **kw: Any) -> dict[str, Any]:
    return {"name": name, "match": {"path": path}, "upstream": upstream, **kw}


async def get_many(
    url: str, n: int, headers: dict[str, str] | None = None, concurrency: int = 1
) -> list[tuple[int, dict[str, str]]]:
    """``n`` GETs (``concurrency`` at a time); the status and headers of each."""
    out: list[tuple[int, dict[str, str]]] = []
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as s:

        async def one() -> None:
            async with sem, s.get(url, headers=headers) as r:
                await r.read()
                out.append((r.status, dict(r.headers)))

        await asyncio.gather(*(one() for _ in range(n)))
    return out
