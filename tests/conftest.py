"""Shared fixtures: ``gateway`` starts the real daemon; ``backend`` starts a real aiohttp app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from support import Daemon, RedisServer, base_config, require_redis_server

GatewayFactory = Callable[..., Awaitable[Daemon]]
BackendFactory = Callable[[web.Application], Awaitable[TestServer]]


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    """``await gateway(config_dict, env=...)`` starts gatewayd and stops it after the test."""
    started: list[Daemon] = []

    async def start(config: dict[str, Any], env: dict[str, str] | None = None) -> Daemon:
        d = Daemon(config, tmp_path / f"gw{len(started)}", env)
        started.append(d)
        return await d.start()

    yield start
    for d in started:
        await d.stop()


@pytest.fixture
async def backend() -> AsyncIterator[BackendFactory]:
    """``await backend(app)`` serves an aiohttp app on 127.0.0.1; returns the TestServer."""
    servers: list[TestServer] = []

    async def start(app: web.Application) -> TestServer:
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for s in servers:
        await s.close()


@pytest.fixture
def config(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """``config(upstreams=..., routes=...)``: a base config with free ports."""
    return lambda **kw: base_config(tmp_path, **kw)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A throwaway redis-server on a free port.

    A missing redis-server binary FAILS the test: ``./scripts/test`` installs it (as root, with
    apt-get) or says how. ``GATEWAYD_SKIP_REDIS=1`` skips the Redis tests instead."""
    require_redis_server()
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
