"""One matrix over the three kinds of upstream: HTTP targets, a relay lease (two real `gatewayd
peer` processes) and a plugin distribution's own kind (`kind: unix` from gatewayd-example, HTTP
on Unix sockets). Each cell runs the real daemon against two real aiohttp backends, "a" and "b",
and checks one feature that the core (gatewayd.proxy.upstream.ManagedUpstream) must give every
kind alike."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
from aiohttp import web
from support import Daemon, base_config, free_port

from gatewayd.config.schema import StateConfig
from gatewayd.stores.keys import KeyStoreSettings, open_key_store

KINDS = ["http", "relay", "unix"]
CELLS = [
    "plain",
    "stream_64mib_both_ways",
    "websocket",
    "breaker_half_open",
    "retry_other_target",
    "timeout_504",
    "disconnect_499",
    "admin_view",
    "metrics",
    "health_checks",
]
TOKEN = "matrix-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
MIB = 1024 * 1024


@dataclass
class Backends:
    hits: dict[str, int] = field(default_factory=lambda: {"a": 0, "b": 0})
    failing: set[str] = field(default_factory=set)
    sick: set[str] = field(default_factory=set)  # their /healthz answers 503
    cancelled: list[str] = field(default_factory=list)


def backend_app(name: str, state: Backends) -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        state.hits[name] += 1
        hop = {"Proxy-Authenticate": "Basic", "Keep-Alive": "timeout=5"}  # the backend's hop only
        return web.Response(text=f"hello from {name}", headers={"X-Backend": name, **hop})

    async def echo(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"X-Backend": name})
        await resp.prepare(request)
        async for chunk in request.content.iter_chunked(256 * 1024):
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def flaky(request: web.Request) -> web.Response:
        state.hits[name] += 1
        status = 500 if name in state.failing else 200
        return web.Response(status=status, text=name, headers={"X-Backend": name})

    async def retry(request: web.Request) -> web.Response:
        state.hits[name] += 1
        status = 503 if name == "a" else 200
        return web.Response(status=status, text=name, headers={"X-Backend": name})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.Response(text="late")

    async def hang(request: web.Request) -> web.Response:
        # The gateway must drop this request when its client goes away: the connection to
        # this backend closes (whatever the kind carried it: TCP, a relay stream, a socket).
        for _ in range(200):
            transport = request.transport
            if transport is None or transport.is_closing():
                state.cancelled.append(name)
                return web.Response(text="gone")
            await asyncio.sleep(0.05)
        return web.Response(text="never cancelled")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await sock.send_str(f"{name}:{msg.data}")
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(status=503 if name in state.sick else 200, text=name)

    app = web.Application(client_max_size=128 * MIB)
    app.router.add_get("/ok", ok)
    app.router.add_post("/echo", echo)
    app.router.add_get("/flaky", flaky)
    app.router.add_get("/retry", retry)
    app.router.add_get("/slow", slow)
    app.router.add_get("/hang", hang)
    app.router.add_get("/ws", ws)
    app.router.add_get("/healthz", healthz)
    return app


class Peer:
    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gatewayd", "peer", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@dataclass
class Setup:
    kind: str
    gw: Daemon
    state: Backends
    target_of: dict[str, str]  # backend name -> the part of its target id that names it


async def admin_get(gw: Daemon, path: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(gw.admin_url + path, headers=ADMIN) as r:
        assert r.status == 200, await r.text()
        return await r.json() if path != "/metrics" else await r.text()


async def upstream_view(gw: Daemon) -> dict[str, Any]:
    view = await admin_get(gw, "/_admin/upstreams")
    (item,) = [u for u in view["upstreams"] if u["name"] == "m"]
    return dict(item)


async def wait_for(check: Callable[[], Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.05)


@pytest.fixture(params=KINDS)
async def setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Setup]:
    kind = request.param
    state = Backends()
    runners: list[web.AppRunner] = []
    peers: list[Peer] = []
    addresses: dict[str, str] = {}
    for name in ("a", "b"):
        runner = web.AppRunner(backend_app(name, state), handle_signals=False)
        await runner.setup()
        runners.append(runner)
        if kind == "unix":
            path = str(tmp_path / f"{name}.sock")
            await web.UnixSite(runner, path).start()
            addresses[name] = path
        else:
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            addresses[name] = f"http://127.0.0.1:{port}"
    common = {
        "retries": {"attempts": 1, "backoff": "10ms", "statuses": [503], "min_retries": 50},
        "timeouts": {"connect": "1s", "read": "1s", "total": "5s"},
        "health": {"path": "/healthz", "interval": "200ms", "timeout": "1s"}
        | {"unhealthy_after": 2, "healthy_after": 2},
    }
    upstream: dict[str, Any]
    if kind == "http":
        upstream = {"targets": [addresses["a"], addresses["b"]], **common}
    elif kind == "relay":
        upstream = {"relay": "matrix", **common}
    else:
        upstream = {"kind": "unix", "targets": [addresses["a"], addresses["b"]], **common}
    cfg = base_config(
        tmp_path,
        upstreams={"m": upstream},
        routes=[
            {
                "name": "m",
                "match": {"path": "/"},
                "upstream": "m",
                "plugins": [
                    {
                        "circuit_breaker": {
                            "consecutive_failures": 2,
                            "open_for": "1s",
                            "failure_statuses": [500],
                        }
                    }
                ],
            }
        ],
    )
    cfg["admin"]["tokens"] = [
        {"id": "t", "hash": bcrypt.hashpw(TOKEN.encode(), bcrypt.gensalt(4)).decode()}
    ]
    cfg["relay"] = {"heartbeat": {"interval": "500ms", "timeout": "3s"}, "connect_rate": "100/s"}
    gw = Daemon(cfg, tmp_path / "gw")
    target_of = {"a": addresses["a"], "b": addresses["b"]}
    try:
        await gw.start()
        if kind == "relay":
            store = await open_key_store(
                StateConfig(dir=Path(cfg["state"]["dir"])),
                settings=KeyStoreSettings(bcrypt_rounds=4),
            )
            try:
                key, record = await store.create("acme", scopes=["relay:matrix"])
            finally:
                await store.close()
            relay_url = gw.url.replace("http://", "ws://") + "/_relay/connect"
            for name in ("a", "b"):
                args = ["--gateway", relay_url, "--lease", "matrix", "--key", key]
                args += ["--target", addresses[name], "--name", name]
                peers.append(Peer(args, tmp_path / f"peer-{name}.log"))
                target_of[name] = f"{record.key_id}/{name}"

            async def both_up() -> bool:
                return len((await upstream_view(gw)).get("targets", [])) == 2

            await wait_for(both_up)
        yield Setup(kind, gw, state, target_of)
    finally:
        for peer in peers:
            peer.stop()
        await gw.stop()
        for runner in runners:
            await runner.cleanup()


async def cell_plain(s: Setup) -> None:
    async with aiohttp.ClientSession() as c:
        seen = set()
        for _ in range(4):
            async with c.get(s.gw.url + "/ok") as r:
                assert r.status == 200
                assert (await r.text()).startswith("hello from ")
                seen.add(r.headers["X-Backend"])
                # hop-by-hop headers stop at the gateway, whatever the kind; Via names it
                assert "Proxy-Authenticate" not in r.headers and "Keep-Alive" not in r.headers
                assert "gatewayd" in r.headers["Via"]
        assert seen == {"a", "b"}  # balanced over both targets


async def cell_stream_64mib_both_ways(s: Setup) -> None:
    sent = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        block = os.urandom(MIB)
        for i in range(64):
            chunk = bytes([i]) + block[1:]
            sent.update(chunk)
            yield chunk

    got = hashlib.sha256()
    size = 0
    timeout = aiohttp.ClientTimeout(total=120)
    async with (
        aiohttp.ClientSession(timeout=timeout) as c,
        c.post(s.gw.url + "/echo", data=body()) as r,
    ):
        assert r.status == 200
        async for chunk in r.content.iter_chunked(MIB):
            got.update(chunk)
            size += len(chunk)
    assert size == 64 * MIB
    assert got.hexdigest() == sent.hexdigest()


async def cell_websocket(s: Setup) -> None:
    async with aiohttp.ClientSession() as c, c.ws_connect(s.gw.url + "/ws") as ws:
        await ws.send_str("hi")
        text = await ws.receive_str(timeout=5)
        assert text in ("a:hi", "b:hi")
        await ws.send_bytes(b"\x00\x01\x02")
        assert await ws.receive_bytes(timeout=5) == b"\x00\x01\x02"
        await ws.close(code=4000, message=b"bye")
        assert ws.close_code == 4000


async def target_item(s: Setup, name: str) -> dict[str, Any]:
    view = await upstream_view(s.gw)
    (item,) = [t for t in view["targets"] if s.target_of[name] in t["id"]]
    return dict(item)


async def cell_breaker_half_open(s: Setup) -> None:
    s.state.failing.add("a")
    async with aiohttp.ClientSession() as c:
        for _ in range(8):  # round robin: "a" fails twice in a row, its breaker opens
            async with c.get(s.gw.url + "/flaky") as r:
                await r.read()
        hits_a = s.state.hits["a"]
        assert hits_a >= 2
        item = await target_item(s, "a")
        assert item["available"] is False, item
        assert "open" in json.dumps(item.get("plugins", {})), item
        for _ in range(6):  # open: everything goes to "b"
            async with c.get(s.gw.url + "/flaky") as r:
                assert r.status == 200
                assert r.headers["X-Backend"] == "b"
        assert s.state.hits["a"] == hits_a
        s.state.failing.clear()
        await asyncio.sleep(1.2)  # open_for: the next request to "a" is its half-open probe

        async def closed() -> bool:
            async with c.get(s.gw.url + "/flaky") as r:
                assert r.status == 200
            item = await target_item(s, "a")
            return item["available"] is True and "open" not in json.dumps(item.get("plugins"))

        await wait_for(closed, 10)
    assert s.state.hits["a"] > hits_a  # the probe reached "a"


async def cell_retry_other_target(s: Setup) -> None:
    async with aiohttp.ClientSession() as c:
        for _ in range(4):
            async with c.get(s.gw.url + "/retry") as r:
                assert r.status == 200  # "a" answers 503: retried on "b"
                assert r.headers["X-Backend"] == "b"
    assert s.state.hits["a"] >= 1


async def cell_timeout_504(s: Setup) -> None:
    started = time.monotonic()
    async with aiohttp.ClientSession() as c, c.get(s.gw.url + "/slow") as r:
        assert r.status == 504
        body = await r.json()
    assert body["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 4


async def cell_disconnect_499(s: Setup) -> None:
    timeout = aiohttp.ClientTimeout(total=0.5)
    async with aiohttp.ClientSession(timeout=timeout) as c:
        with pytest.raises(asyncio.TimeoutError):
            async with c.get(s.gw.url + "/hang") as r:
                await r.read()

    async def cancelled() -> bool:
        return bool(s.state.cancelled)

    await wait_for(cancelled, 8)

    async def logged() -> bool:
        for line in s.gw.logs().splitlines():
            entry = json.loads(line) if line.startswith("{") else {}
            if entry.get("message") == "access" and entry.get("path") == "/hang":
                return bool(entry["status"] == 499)
        return False

    await wait_for(logged, 5)


async def cell_admin_view(s: Setup) -> None:
    item = await upstream_view(s.gw)
    assert item["kind"] == s.kind
    ids = sorted(t["id"] for t in item["targets"])
    assert len(ids) == 2
    assert all(t["available"] for t in item["targets"])
    for name in ("a", "b"):
        assert any(s.target_of[name] in i for i in ids), (name, ids)


async def cell_metrics(s: Setup) -> None:
    async with aiohttp.ClientSession() as c, c.get(s.gw.url + "/ok") as r:
        assert r.status == 200
    text = await admin_get(s.gw, "/metrics")
    assert 'gatewayd_upstream_duration_seconds_count{upstream="m"}' in text
    assert 'gatewayd_upstream_target_up{target="' in text or 'upstream="m",target=' in text


async def cell_health_checks(s: Setup) -> None:
    """Active health checks go through the kind like any request: "a" fails its probes, leaves
    the rotation, and comes back once they pass again."""
    s.state.sick.add("a")

    async def out() -> bool:
        return (await target_item(s, "a"))["healthy"] is False

    await wait_for(out, 10)
    async with aiohttp.ClientSession() as c:
        for _ in range(6):
            async with c.get(s.gw.url + "/ok") as r:
                assert r.status == 200
                assert r.headers["X-Backend"] == "b"
    item = await target_item(s, "a")
    assert item["available"] is False
    assert item["health_check"]["last_status"] == 503
    s.state.sick.clear()

    async def back() -> bool:
        return (await target_item(s, "a"))["healthy"] is True

    await wait_for(back, 10)
    async with aiohttp.ClientSession() as c:
        seen = set()
        for _ in range(4):
            async with c.get(s.gw.url + "/ok") as r:
                seen.add(r.headers["X-Backend"])
    assert seen == {"a", "b"}


@pytest.mark.parametrize("cell", CELLS)
async def test_every_kind(setup: Setup, cell: str) -> None:
    await globals()[f"cell_{cell}"](setup)
