"""Fixtures for the relay tests (helpers live in relay_helpers.py)."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from relay_helpers import PeerProcess, lease_connections, relay_url, wait_for
from support import Daemon


@pytest.fixture
async def peer_proc(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[PeerProcess]]]:
    """``await peer_proc(gw, lease, key, target, connections=1, extra=[...], wait=True)``."""
    started: list[PeerProcess] = []

    async def start(
        gw: Daemon,
        lease: str,
        key: str,
        target: str,
        connections: int = 1,
        extra: list[str] | None = None,
        wait: bool = True,
    ) -> PeerProcess:
        args = ["--gateway", relay_url(gw), "--lease", lease, "--key", key, "--target", target]
        args += ["--connections", str(connections), *(extra or [])]
        peer = PeerProcess(args, tmp_path / f"peer{len(started)}.log")
        started.append(peer)
        if wait:
            before = len(await lease_connections(gw, lease))

            async def up() -> bool:
                if peer.proc.poll() is not None:
                    raise RuntimeError(f"peer exited {peer.proc.returncode}:\n{peer.logs()}")
                return len(await lease_connections(gw, lease)) >= before + connections

            await wait_for(up, 15.0)
        return peer

    yield start
    for peer in started:
        peer.kill(signal.SIGTERM)
    for peer in started:
        try:
            await peer.wait(5.0)
        except TimeoutError:
            peer.kill()
