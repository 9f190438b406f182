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
    llm_rate: float = 500.0
    llm_duration: float = 10.0
    llm_streams: int = 1000


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


# --- the LLM gateway -------------------------------------------------------------------------

# The floors: what gatewayd may add to a provider that answers at once.
LLM_MAX_ADDED_P50_MS = 1.0
LLM_MAX_ADDED_P99_MS = 5.0
LLM_MAX_ADDED_TTFT_MS = 2.0
LLM_MAX_STREAMS_RSS_MIB = 400.0  # the daemon's RSS with 1,000 streams open (docs/llm.md)


def run_llm(ctx: Context, s: ExtraSettings, out: ExtraResult) -> None:
    """The ``llm`` plugin (plugins/gatewayd-llm) in front of a fake OpenAI-compatible server
    that answers at once: latency at a fixed request rate, time to first token, and the
    daemon's memory with ``llm_streams`` streams open, direct and through gatewayd."""
    out.title = (
        f"LLM gateway: chat completions at {s.llm_rate:g} req/s for {s.llm_duration:g}s "
        f"(open loop), time to first token, {s.llm_streams:,} concurrent streams"
    )
    out.columns = ("path", "p50 ms", "p99 ms", "TTFT p50", "TTFT p99", "streams RSS MiB")
    port = free_port()
    fake = f"http://127.0.0.1:{port}"
    args = ["--rate", str(s.llm_rate), "--duration", str(s.llm_duration)]
    timeout = s.llm_duration + 180
    with serving(
        ctx.children,
        [ctx.python, str(LOAD), "fake-openai", str(port)],
        what="fake OpenAI server",
        core=ctx.client_core,
        log=ctx.tmp / "fake-openai.log",
        ready_url=f"{fake}/v1/models",
    ):
        direct = load(ctx, "llm", fake, *args, "--streams", "0", timeout=timeout)
        workdir = ctx.tmp / "llm"
        state_dir = workdir / "state"
        state_dir.mkdir(parents=True)
        key = create_key(ctx, state_dir, "--tenant", "bench", "--id", "bench-llm")
        deployments = {m: [{"upstream": "fake", "model": m}] for m in ("fast", "slow")}
        config = {
            "upstreams": {"fake": {"kind": "openai", "base_url": f"{fake}/v1", "api_key": "x"}},
            "routes": [
                {
                    "name": "llm",
                    "match": {"path": "/v1/"},
                    "plugins": [{"key_auth": {}}, {"llm": {"models": deployments}}],
                }
            ],
        }
        with start_gatewayd(ctx, workdir, (), RowSetup(config=config)) as gw:
            args += ["--key", key, "--streams", str(s.llm_streams), "--pid", str(gw.pid)]
            proxied = load(ctx, "llm", gw.url, *args, timeout=timeout)
    for label, doc in (("direct", direct), ("gatewayd", proxied)):
        doc["path"] = label
        out.data.append(doc)
        if doc["errors"]:
            raise RuntimeError(f"{label}: {doc['errors']} requests failed: {doc['first_error']}")
        out.rows.append(
            [
                label,
                _fmt(doc["p50_ms"], ".2f"),
                _fmt(doc["p99_ms"], ".2f"),
                _fmt(doc["ttft_p50_ms"], ".2f"),
                _fmt(doc["ttft_p99_ms"], ".2f"),
                _fmt(doc.get("streams_rss_mib"), ".1f"),
            ]
        )
    added = {
        "p50_ms": proxied["p50_ms"] - direct["p50_ms"],
        "p99_ms": proxied["p99_ms"] - direct["p99_ms"],
        "ttft_p50_ms": proxied["ttft_p50_ms"] - direct["ttft_p50_ms"],
    }
    out.data.append({"path": "added", **added})
    ttft = _fmt(added["ttft_p50_ms"], "+.2f")
    out.rows.append(["added", _fmt(added["p50_ms"], "+.2f"), _fmt(added["p99_ms"], "+.2f"), ttft])
    out.rows[-1] += ["-", "-"]
    problems = []
    if proxied.get("streams_failures"):
        problems.append(f"{proxied['streams_failures']} streams failed")
    if added["p50_ms"] > LLM_MAX_ADDED_P50_MS:
        problems.append(f"p50 adds {added['p50_ms']:.2f} ms > {LLM_MAX_ADDED_P50_MS}")
    if added["p99_ms"] > LLM_MAX_ADDED_P99_MS:
        problems.append(f"p99 adds {added['p99_ms']:.2f} ms > {LLM_MAX_ADDED_P99_MS}")
    if added["ttft_p50_ms"] > LLM_MAX_ADDED_TTFT_MS:
        problems.append(f"TTFT adds {added['ttft_p50_ms']:.2f} ms > {LLM_MAX_ADDED_TTFT_MS}")
    rss = proxied.get("streams_rss_mib")
    if rss is not None and rss > LLM_MAX_STREAMS_RSS_MIB:
        problems.append(f"RSS {rss:.0f} MiB > {LLM_MAX_STREAMS_RSS_MIB:g} with streams open")
    if problems:
        out.error = "floor missed: " + "; ".join(problems)


EXTRAS: list[Extra] = [
    Extra("ws", run_ws),
    Extra("sse", run_sse),
    Extra("relay-idle", run_relay_idle),
    Extra("llm", run_llm),
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
