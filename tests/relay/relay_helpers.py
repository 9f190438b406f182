"""Relay test helpers: keys in the daemon's key store, `gatewayd peer` subprocesses, admin calls."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
from support import Daemon

from gatewayd.config.schema import StateConfig
from gatewayd.stores.keys import KeyStoreSettings, open_key_store

ADMIN_TOKEN = "relay-test-admin-token"
ADMIN_HASH = bcrypt.hashpw(ADMIN_TOKEN.encode(), bcrypt.gensalt(4)).decode()
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def relay_config(
    tmp_path: Path, base: Callable[..., dict[str, Any]], **relay: Any
) -> dict[str, Any]:
    """A config with a by-path relay route, short heartbeats and an admin token."""
    cfg = base(
        routes=[{"name": "peers", "match": {"path": "/peer/"}, "relay": "by_path"}],
    )
    cfg["admin"]["tokens"] = [{"id": "test", "hash": ADMIN_HASH}]
    cfg["relay"] = {
        "heartbeat": {"interval": "200ms", "timeout": "1s"},
        "connect_rate": "1000/s",
        "event_types": ["api.deployed", "gateway.config.updated"],
        **relay,
    }
    return cfg


async def make_key(state_dir: Path, *scopes: str, tenant: str = "acme") -> tuple[str, str]:
    """A key in the daemon's (SQLite) key store; returns (the key, its id)."""
    store = await open_key_store(
        StateConfig(dir=state_dir), settings=KeyStoreSettings(bcrypt_rounds=4)
    )
    try:
        key, record = await store.create(tenant, scopes=list(scopes))
    finally:
        await store.close()
    return key, record.key_id


async def revoke_key(state_dir: Path, key_id: str) -> None:
    store = await open_key_store(StateConfig(dir=state_dir))
    try:
        await store.revoke(key_id)
    finally:
        await store.close()


def relay_url(gw: Daemon) -> str:
    return gw.url.replace("http://", "ws://") + gw.config["relay"].get("path", "/_relay/connect")


async def relay_stats(gw: Daemon) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(gw.admin_url + "/_admin/relay/stats", headers=ADMIN) as r,
    ):
        assert r.status == 200, await r.text()
        return dict(await r.json())


async def lease_connections(gw: Daemon, lease: str) -> list[dict[str, Any]]:
    stats = await relay_stats(gw)
    return list(stats["leases"].get(lease, {}).get("connections", []))


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.05)


class PeerProcess:
    """``python -m gatewayd peer ...`` in a subprocess."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gatewayd", "peer", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ},
        )
        log.close()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    async def wait(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"peer did not exit:\n{self.logs()}")
            await asyncio.sleep(0.05)
        return self.proc.returncode


def upstream_url(server: Any) -> str:
    return f"http://127.0.0.1:{server.port}"


def state_dir(gw: Daemon) -> Path:
    return Path(gw.config["state"]["dir"])
