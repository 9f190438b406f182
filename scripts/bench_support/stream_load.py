"""The streaming parts of scripts/bench: an echo backend and three load clients (aiohttp, uvloop).

Runs on the project's .venv interpreter, pinned by the harness. Each client prints one line
``RESULT {json}`` that the harness reads; the gateway's memory is read from ``/proc/<pid>``.

    stream_load.py echo PORT
    stream_load.py ws URL --connections 50 --duration 5 --size 64
    stream_load.py sse URL --token T --pid PID --clients 1000,3000
    stream_load.py relay-idle WS_URL --lease L --key K --target URL --connections 1000 --pid PID
    stream_load.py fake-openai PORT
    stream_load.py llm BASE_URL --key K --rate 500 --duration 10 --streams 1000 [--pid PID]
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


# --- the LLM gateway: a fake OpenAI-compatible server and its load --------------------------

FAKE_CHUNKS = 8  # content chunks of a streamed answer
SLOW_INTERVAL = 0.25  # model "slow": one chunk this often, for the concurrent-streams step


def _completion(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }


def _chunk(model: str, delta: dict[str, Any], usage: bool = False) -> bytes:
    doc: dict[str, Any] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": None}],
    }
    if usage:
        doc["usage"] = {"prompt_tokens": 5, "completion_tokens": FAKE_CHUNKS, "total_tokens": 13}
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


async def _chat(request: web.Request) -> web.StreamResponse:
    """Answers at once: the whole completion, or a stream of ``FAKE_CHUNKS`` chunks (model
    ``slow``: one chunk every ``SLOW_INTERVAL`` seconds)."""
    body = await request.json()
    model = str(body.get("model", "fast"))
    if not body.get("stream"):
        return web.json_response(_completion(model))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(_chunk(model, {"role": "assistant", "content": ""}))
    for i in range(FAKE_CHUNKS):
        if model == "slow":
            await asyncio.sleep(SLOW_INTERVAL)
        await resp.write(_chunk(model, {"content": f"t{i} "}))
    if (body.get("stream_options") or {}).get("include_usage"):
        await resp.write(_chunk(model, {}, usage=True))
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def _models(request: web.Request) -> web.Response:
    data = [{"id": m, "object": "model", "owned_by": "bench"} for m in ("fast", "slow")]
    return web.json_response({"object": "list", "data": data})


async def fake_openai(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/v1/models", _models)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    await asyncio.Event().wait()


async def _open_loop(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], rate: float, duration: float
) -> tuple[list[float], int, str | None]:
    """Non-streamed chat completions started at a fixed rate (open loop: a slow answer does not
    delay the next request); each request's latency."""
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    latencies: list[float] = []
    errors = 0
    first_error: str | None = None

    async def one() -> None:
        nonlocal errors, first_error
        sent = time.perf_counter()
        try:
            async with session.post(url, json=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"status {resp.status}")
        except Exception as exc:  # counted, the run goes on
            errors += 1
            first_error = first_error or repr(exc)
            return
        latencies.append(time.perf_counter() - sent)

    tasks = []
    began = time.perf_counter()
    n = int(rate * duration)
    for i in range(n):
        delay = began + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    latencies.sort()
    return latencies, errors, first_error


async def _ttft(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], count: int
) -> list[float]:
    """Time to the first content chunk of streamed completions, one at a time."""
    body = {"model": "fast", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    out: list[float] = []
    for _ in range(count):
        sent = time.perf_counter()
        async with session.post(url, json=body, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"streamed request answered {resp.status}")
            first = None
            async for line in resp.content:
                if first is None and line.startswith(b"data: {"):
                    first = time.perf_counter() - sent
            if first is None:
                raise RuntimeError("a stream without a chunk")
            out.append(first)
    out.sort()
    return out


async def _concurrent_streams(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], streams: int, pid: int
) -> dict[str, Any]:
    """``streams`` slow streams open at once; the daemon's RSS while all are open."""
    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    baseline = rss_mib(pid) if pid else None
    opened = asyncio.Event()
    count = 0
    failures: list[str] = []

    async def one() -> None:
        nonlocal count
        try:
            async with session.post(url, json=body, headers=headers) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"status {resp.status}")
                await resp.content.readline()
                count += 1
                if count == streams:
                    opened.set()
                async for _line in resp.content:
                    pass
        except Exception as exc:
            failures.append(repr(exc))
            opened.set()

    tasks = [asyncio.create_task(one()) for _ in range(streams)]
    async with asyncio.timeout(60):
        await opened.wait()
    peak = rss_mib(pid) if pid else None
    await asyncio.gather(*tasks)
    return {
        "streams": streams,
        "opened": count,
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
        "rss_mib": peak,
        "baseline_rss_mib": baseline,
    }


async def llm_load(
    base: str, key: str, rate: float, duration: float, streams: int, pid: int
) -> None:
    raise_fd_limit()
    url = base.rstrip("/") + "/v1/chat/completions"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=NO_TIMEOUT) as session:
        await _open_loop(session, url, headers, rate, 1.0)  # warm up: connections, caches
        latencies, errors, first_error = await _open_loop(session, url, headers, rate, duration)
        ttft = await _ttft(session, url, headers, 200)
        concurrent = (
            await _concurrent_streams(session, url, headers, streams, pid) if streams else {}
        )
    result(
        {
            "requests": len(latencies),
            "errors": errors,
            "first_error": first_error,
            "p50_ms": (quantile(latencies, 0.5) or 0) * 1000,
            "p99_ms": (quantile(latencies, 0.99) or 0) * 1000,
            "ttft_p50_ms": (quantile(ttft, 0.5) or 0) * 1000,
            "ttft_p99_ms": (quantile(ttft, 0.99) or 0) * 1000,
            **{f"streams_{k}": v for k, v in concurrent.items()},
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
    p = sub.add_parser("fake-openai")
    p.add_argument("port", type=int)
    p = sub.add_parser("llm")
    p.add_argument("base")
    p.add_argument("--key", default="")
    p.add_argument("--rate", type=float, default=500)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--pid", type=int, default=0)
    args = parser.parse_args()
    if args.cmd == "echo":
        uvloop.run(echo_server(args.port))
    elif args.cmd == "ws":
        uvloop.run(ws_load(args.url, args.connections, args.duration, args.size))
    elif args.cmd == "fake-openai":
        uvloop.run(fake_openai(args.port))
    elif args.cmd == "llm":
        uvloop.run(llm_load(args.base, args.key, args.rate, args.duration, args.streams, args.pid))
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
