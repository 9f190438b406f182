"""Test support of the catalog's tests: a throwaway redis-server (``catalog_redis_url``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from llm_testkit import free_port


@pytest.fixture
def catalog_redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server on a free port. Missing, it fails the test (as gatewayd's own Redis
    tests do), unless GATEWAYD_SKIP_REDIS=1."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        if os.environ.get("GATEWAYD_SKIP_REDIS") == "1":
            pytest.skip("redis-server not installed (GATEWAYD_SKIP_REDIS=1)")
        pytest.fail("redis-server not installed: apt-get install redis-server")
    port = free_port()
    workdir = tmp_path / "redis"
    workdir.mkdir()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)
