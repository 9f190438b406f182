"""Fixtures for the identity tests: a real redis-server and a real OIDC issuer."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from .identity_support import Issuer

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A throwaway redis-server on a free port (skips when the binary is missing)."""
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    port = _free_port()
    work = tmp_path / "redis"
    work.mkdir()
    proc = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(work),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                    break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail("redis-server exited at start")
                import time

                time.sleep(0.025)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    """A real OIDC issuer on 127.0.0.1 (discovery, JWKS, introspection)."""
    iss = Issuer()
    server = TestServer(iss.app(), host="127.0.0.1")
    await server.start_server()
    iss.url = f"http://127.0.0.1:{server.port}"
    yield iss
    await server.close()
    await asyncio.sleep(0)
