"""Helpers for the traffic tests: backends that count what reaches them, a real redis-server."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from support import free_port

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


class RedisServer:
    """A real ``redis-server`` on a free port, its data in a temp dir."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import socket

        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def upstream_url(server: Any) -> str:
    return f"http://127.0.0.1:{server.port}"
