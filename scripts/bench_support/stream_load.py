"""The streaming parts of scripts/bench: an echo backend and three load clients (aiohttp, uvloop).

Runs on the project's .venv interpreter, pinned by the harness. Each client prints one line
``RESULT {json}`` that the harness reads; the gateway's memory is read from ``/proc/<pid>``.

    stream_load.py echo PORT
    stream_load.py ws URL --connections 50 --duration 5 --size 64
    stream_load.py sse URL --token T --pid PID --clients 1000,3000
    stream_load.py relay-idle WS_URL --lease L --key K --target URL --connections 1000 --pid PID
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import time
from datetime import datetime
from typing import Any

import aiohttp
import uvloop
from aiohttp import WSMsgType, web

NO_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30)


def result(doc: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(doc), flush=True)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        lines = status.read().splitlines()
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- the WebSocket echo backend --------------------------------------------------------------


async def _echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
        elif msg.type is WSMsgType.TEXT:
            await ws.send_str(msg.data)
    return ws


async def _ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def echo_server(port: int) -> None:
    app = web.Application()
    app.router.add_get("/ws", _echo)
    app.router.add_get("/small", _ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    await asyncio.Event().wait()


# --- WebSocket echo load ---------------------------------------------------------------------


async def ws_load(url: str, connections: int, duration: float, size: int) -> None:
    """``connections`` WebSockets, each sending one message and awaiting its echo, in a loop."""
    payload = os.urandom(size)
    latencies: list[float] = []
    errors = 0

    async def one(session: aiohttp.ClientSession, start: asyncio.Event, end: list[float]) -> None:
        nonlocal errors
        async with session.ws_connect(url, max_msg_size=0) as ws:
            await start.wait()
            while time.monotonic() < end[0]:
                sent = time.perf_counter()
                await ws.send_bytes(payload)
                msg = await ws.receive()
                if msg.type is not WSMsgType.BINARY or msg.data != payload:
                    errors += 1
                    return
                latencies.append(time.perf_counter() - sent)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=NO_TIMEOUT) as session:
        start, end = asyncio.Event(), [0.0]
        tasks = [asyncio.create_task(one(session, start, end)) for _ in range(connections)]
        await asyncio.sleep(0.5)  # every connection upgraded before the clock starts
        began = time.monotonic()
        end[0] = began + duration
        start.set()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        elapsed = time.monotonic() - began
    failed = [repr(d) for d in done if isinstance(d, BaseException)]
    latencies.sort()
    result(
        {
            "messages": len(latencies),
            "seconds": elapsed,
            "messages_per_sec": len(latencies) / elapsed,
            "p50_ms": (quantile(latencies, 0.5) or 0) * 1000,
            "p99_ms": (quantile(latencies, 0.99) or 0) * 1000,
            "errors": errors + len(failed),
            "first_error": failed[0] if failed else None,
        }
    )


# --- SSE fan-out -----------------------------------------------------------------------------


class Tally:
    """How many clients have received the current event; ``done`` is set when all have."""

    def __init__(self) -> None:
        self.count = 0
        self.want = 0
        self.done = asyncio.Event()

    def expect(self, want: int) -> None:
        self.count, self.want = 0, want
        self.done.clear()

    def arrived(self) -> None:
        self.count += 1
        if self.count >= self.want:
            self.done.set()


class SSEClient:
    """One open event stream; records when each event arrives, and how late."""

    def __init__(self, resp: aiohttp.ClientResponse, tally: Tally) -> None:
        self.resp = resp
        self.tally = tally
        self.delays: dict[int, float] = {}  # event id -> seconds from publish to arrival
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with_data = b"data:"
        while True:
            line = await self.resp.content.readline()
            if not line:
                return
            if line.startswith(with_data):
                now = time.time()
                doc = json.loads(line[len(with_data) :])
                sent = datetime.fromisoformat(doc["time"]).timestamp()
                self.delays[doc["id"]] = now - sent
                self.tally.arrived()


async def sse_fanout(url: str, token: str, pid: int, steps: list[int]) -> None:
    """Open clients up to each step's count, read the RSS, publish one event (SIGHUP: the
    daemon reloads and publishes ``config.reloaded``) and time its arrival at every client."""
    raise_fd_limit()
    headers = {"Authorization": f"Bearer {token}"}
    clients: list[SSEClient] = []
    tally = Tally()
    rows = []
    baseline = rss_mib(pid)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=NO_TIMEOUT) as session:

        async def open_one() -> SSEClient:
            resp = await session.get(url, headers=headers)
            if resp.status != 200:
                raise RuntimeError(f"GET {url} answered {resp.status}: {await resp.text()}")
            return SSEClient(resp, tally)

        try:
            for count in steps:
                began = time.monotonic()
                while len(clients) < count:
                    batch = min(200, count - len(clients))
                    clients += await asyncio.gather(*(open_one() for _ in range(batch)))
                opened = time.monotonic() - began
                await asyncio.sleep(1.0)
                rss = rss_mib(pid)
                tally.expect(len(clients))
                os.kill(pid, signal.SIGHUP)
                async with asyncio.timeout(60):
                    await tally.done.wait()
                delays = sorted(_last(c) for c in clients)
                rows.append(
                    {
                        "clients": count,
                        "open_s": opened,
                        "rss_mib": rss,
                        "baseline_rss_mib": baseline,
                        "kib_per_client": (rss - baseline) * 1024 / count,
                        "p50_ms": (quantile(delays, 0.5) or 0) * 1000,
                        "p99_ms": (quantile(delays, 0.99) or 0) * 1000,
                        "max_ms": delays[-1] * 1000,
                    }
                )
        finally:
            for c in clients:
                c.task.cancel()
                c.resp.close()
    result({"steps": rows})


def _last(client: SSEClient) -> float:
    """The delay of the newest event the client has seen (event ids increase)."""
    return client.delays[max(client.delays)]


# --- idle relay peers ------------------------------------------------------------------------


async def relay_idle(
    gateway: str, lease: str, key: str, target: str, connections: int, hold: float, pid: int
) -> None:
    """``connections`` peer WebSockets on one lease, held idle through heartbeats."""
    from gatewayd.relay.peer import Peer

    raise_fd_limit()
    baseline = rss_mib(pid)
    async with Peer(gateway, lease, key, target, connections=connections) as peer:
        began = time.monotonic()
        await peer.wait_connected(timeout=120)
        connect_s = time.monotonic() - began
        await asyncio.sleep(hold)
        rss = rss_mib(pid)
        still = peer.connected
    result(
        {
            "connections": connections,
            "connect_s": connect_s,
            "hold_s": hold,
            "still_connected": still,
            "rss_mib": rss,
            "baseline_rss_mib": baseline,
            "kib_per_connection": (rss - baseline) * 1024 / connections,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="stream_load.py")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("echo")
    p.add_argument("port", type=int)
    p = sub.add_parser("ws")
    p.add_argument("url")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--size", type=int, default=64)
    p = sub.add_parser("sse")
    p.add_argument("url")
    p.add_argument("--token", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--clients", default="1000,3000")
    p = sub.add_parser("relay-idle")
    p.add_argument("gateway")
    p.add_argument("--lease", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--hold", type=float, default=5.0)
    p.add_argument("--pid", type=int, required=True)
    args = parser.parse_args()
    if args.cmd == "echo":
        uvloop.run(echo_server(args.port))
    elif args.cmd == "ws":
        uvloop.run(ws_load(args.url, args.connections, args.duration, args.size))
    elif args.cmd == "sse":
        steps = [int(n) for n in args.clients.split(",") if n.strip()]
        uvloop.run(sse_fanout(args.url, args.token, args.pid, steps))
    else:
        uvloop.run(
            relay_idle(
                args.gateway,
                args.lease,
                args.key,
                args.target,
                args.connections,
                args.hold,
                args.pid,
            )
        )


if __name__ == "__main__":
    main()
