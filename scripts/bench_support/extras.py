"""The parts of the run that are not wrk rows: WebSocket echo, SSE fan-out, idle relay peers.

Each is one :class:`Extra` in ``EXTRAS``: it starts what it needs (gatewayd on the proxy core,
its clients and backends on the client core), runs ``stream_load.py`` for the load, and returns
a small table printed after the main one. ``--only`` selects them by name like the rows.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .procs import StartError, free_port, other_cpu_delta, other_cpu_seconds, peak_rss_mib
from .targets import (
    RELAY_LEASE,
    RELAY_ROUTES,
    SUPPORT,
    Context,
    RowSetup,
    create_key,
    serving,
    start_gatewayd,
)

LOAD = SUPPORT / "stream_load.py"


@dataclass(frozen=True)
class ExtraSettings:
    ws_duration: float
    ws_connections: int
    ws_size: int
    sse_clients: str
    relay_peers: int
    relay_hold: float


@dataclass
class ExtraResult:
    name: str
    title: str = ""
    columns: Sequence[str] = ()
    rows: list[list[str]] = field(default_factory=list)
    data: list[dict[str, Any]] = field(default_factory=list)  # the raw numbers, for --json
    error: str | None = None
    other_cpu_cores: float | None = None


@dataclass(frozen=True)
class Extra:
    name: str
    run: Callable[[Context, ExtraSettings, ExtraResult], None]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def load(ctx: Context, *args: str, timeout: float) -> dict[str, Any]:
    """Run ``stream_load.py ARGS`` on the client core and return its RESULT document."""
    argv = [ctx.python, str(LOAD), *args]
    out = ctx.children.run(argv, core=ctx.client_core, timeout=timeout)
    match = re.search(r"^RESULT (.*)$", out, re.M)
    if match is None:
        raise RuntimeError(f"no RESULT line from stream_load.py {args[0]}:\n{out}")
    doc: dict[str, Any] = json.loads(match.group(1))
    return doc


# --- WebSocket echo --------------------------------------------------------------------------


@contextmanager
def echo_backend(ctx: Context) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serving(
        ctx.children,
        [ctx.python, str(LOAD), "echo", str(port)],
        what="WebSocket echo backend",
        core=ctx.client_core,
        log=ctx.tmp / "ws-echo.log",
        ready_url=f"{url}/small",
    ):
        yield url


def run_ws(ctx: Context, s: ExtraSettings, out: ExtraResult) -> None:
    """Messages/s and round trips: direct to an aiohttp echo backend, then through gatewayd."""
    out.title = (
        f"WebSocket echo: {s.ws_connections} connections, {s.ws_size}-byte binary messages, "
        f"{s.ws_duration:g}s each"
    )
    out.columns = ("path", "msg/s", "p50 ms", "p99 ms", "x direct", "peak RSS MiB")
    args = ["--connections", str(s.ws_connections), "--duration", str(s.ws_duration)]
    args += ["--size", str(s.ws_size)]
    timeout = s.ws_duration + 60
    with echo_backend(ctx) as backend:
        direct = load(ctx, "ws", backend.replace("http", "ws", 1) + "/ws", *args, timeout=timeout)
        config = {
            "upstreams": {"ws": {"targets": [backend]}},
            "routes": [{"name": "ws", "match": {"path": "/ws"}, "upstream": "ws"}],
        }
        with start_gatewayd(ctx, ctx.tmp / "ws", (), RowSetup(config=config)) as gw:
            url = gw.url.replace("http", "ws", 1) + "/ws"
            proxied = load(ctx, "ws", url, *args, timeout=timeout)
            proxied["peak_rss_mib"] = peak_rss_mib(gw.pid)
    for label, doc in (("direct", direct), ("gatewayd", proxied)):
        doc["path"] = label
        out.data.append(doc)
        if doc["errors"]:
            raise RuntimeError(f"{label}: {doc['errors']} connections failed: {doc['first_error']}")
        ratio = doc["messages_per_sec"] / direct["messages_per_sec"]
        out.rows.append(
            [
                label,
                _fmt(doc["messages_per_sec"], ",.0f"),
                _fmt(doc["p50_ms"], ".2f"),
                _fmt(doc["p99_ms"], ".2f"),
                _fmt(ratio, ".2f"),
                _fmt(doc.get("peak_rss_mib"), ".1f"),
            ]
        )


# --- SSE fan-out -----------------------------------------------------------------------------


def bcrypt_hash(ctx: Context, secret: str) -> str:
    """A bcrypt hash from the venv's bcrypt (cost 4: thousands of clients log in at once)."""
    code = "import bcrypt,sys;print(bcrypt.hashpw(sys.argv[1].encode(),bcrypt.gensalt(4)).decode())"
    return ctx.children.run([ctx.python, "-c", code, secret], core=None, timeout=60).strip()


def run_sse(ctx: Context, s: ExtraSettings, out: ExtraResult) -> None:
    """Clients on ``/_admin/events``; one event (a reload's ``config.reloaded``) to all."""
    out.title = "SSE fan-out: clients on /_admin/events, one event (config.reloaded) to all"
    out.columns = ("clients", "RSS MiB", "KiB/client", "p50 ms", "p99 ms", "max ms")
    token = secrets.token_urlsafe(24)
    config = {"admin": {"tokens": [{"id": "bench", "hash": bcrypt_hash(ctx, token)}]}}
    with start_gatewayd(ctx, ctx.tmp / "sse", (), RowSetup(config=config)) as gw:
        url = f"{gw.admin_url}/_admin/events?types=config.reloaded"
        args = ["--token", token, "--pid", str(gw.pid), "--clients", s.sse_clients]
        doc = load(ctx, "sse", url, *args, timeout=300)
    for step in doc["steps"]:
        out.data.append(step)
        out.rows.append(
            [
                f"{step['clients']:,}",
                _fmt(step["rss_mib"], ".1f"),
                _fmt(step["kib_per_client"], ".1f"),
                _fmt(step["p50_ms"], ".0f"),
                _fmt(step["p99_ms"], ".0f"),
                _fmt(step["max_ms"], ".0f"),
            ]
        )


# --- idle relay peers ------------------------------------------------------------------------


def run_relay_idle(ctx: Context, s: ExtraSettings, out: ExtraResult) -> None:
    """``relay_peers`` peer WebSockets held idle through 1 s heartbeats: gatewayd's RSS."""
    out.title = (
        f"relay: idle peer connections held through heartbeats (interval 1s, timeout 3s) "
        f"for {s.relay_hold:g}s"
    )
    out.columns = ("connections", "connect s", "still up", "RSS MiB", "idle RSS MiB", "KiB/conn")
    workdir = ctx.tmp / "relay-idle"
    state_dir = workdir / "state"
    state_dir.mkdir(parents=True)
    key = create_key(ctx, state_dir, "--tenant", "bench", "--scope", f"relay:{RELAY_LEASE}")
    relay = {
        "connect_rate": "100000/s",
        "max_connections": 5000,
        "heartbeat": {"interval": "1s", "timeout": "3s"},
    }
    setup = RowSetup(config={"routes": RELAY_ROUTES, "relay": relay})
    with start_gatewayd(ctx, workdir, (), setup) as gw:
        ws_url = gw.url.replace("http", "ws", 1) + "/_relay/connect"
        args = ["--lease", RELAY_LEASE, "--key", key, "--target", ctx.backend_url]
        args += ["--connections", str(s.relay_peers), "--hold", str(s.relay_hold)]
        doc = load(ctx, "relay-idle", ws_url, *args, "--pid", str(gw.pid), timeout=300)
    out.data.append(doc)
    out.rows.append(
        [
            f"{doc['connections']:,}",
            _fmt(doc["connect_s"], ".1f"),
            f"{doc['still_connected']:,}",
            _fmt(doc["rss_mib"], ".1f"),
            _fmt(doc["baseline_rss_mib"], ".1f"),
            _fmt(doc["kib_per_connection"], ".1f"),
        ]
    )
    if doc["still_connected"] != doc["connections"]:
        out.error = f"only {doc['still_connected']} of {doc['connections']} peers stayed connected"


EXTRAS: list[Extra] = [
    Extra("ws", run_ws),
    Extra("sse", run_sse),
    Extra("relay-idle", run_relay_idle),
]


def measure_extra(extra: Extra, ctx: Context, s: ExtraSettings) -> ExtraResult:
    """Run one extra; a failure is recorded in the result and the run goes on."""
    result = ExtraResult(extra.name)
    others, started = other_cpu_seconds(ctx.children), time.monotonic()
    try:
        extra.run(ctx, s, result)
    except (StartError, RuntimeError, OSError, KeyError, ValueError) as err:
        result.error = (
            f"{type(err).__name__}: {err}" if not isinstance(err, StartError) else str(err)
        )
    used = other_cpu_delta(others, other_cpu_seconds(ctx.children))
    result.other_cpu_cores = used / (time.monotonic() - started)
    return result
