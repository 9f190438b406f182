"""What the benchmark measures: the backend, and each proxy in front of it.

A row starts its proxy (pinned to the proxy core), yields a :class:`Target` to load, and stops
it when the ``with`` ends. gatewayd rows are data: add one :class:`GatewaydVariant` line to
``GATEWAYD_VARIANTS`` to benchmark another plugin chain. With a baseline (``--baseline REV``),
every gatewayd row also runs as ``<row>@base`` on the baseline's gatewayd
(``Context.base_gatewayd``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from .procs import Children, StartError, free_port, http_get, wait_ready

SUPPORT = Path(__file__).resolve().parent
SMALL_BODY = (
    b"gatewayd bench: a 100-byte body served by nginx as a static file.".ljust(99, b".") + b"\n"
)
LARGE_SIZE = 64 * 1024 * 1024


@dataclass(frozen=True)
class Context:
    """Everything a row needs to start its proxy."""

    tmp: Path
    children: Children
    backend_url: str
    backend_pid: int
    python: str
    gatewayd: Path
    proxy_core: int | None
    client_core: int | None = None
    base_gatewayd: Path | None = None  # the baseline's gatewayd (--baseline), for @base rows


@dataclass(frozen=True)
class Target:
    """A running target: where to send load, whose RSS to read, what the client must send."""

    url: str
    pid: int
    headers: Mapping[str, str] = field(default_factory=dict)
    expect_headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    name: str
    start: Callable[[Context], AbstractContextManager[Target]]
    base_of: str | None = None  # ``gatewayd@base`` runs the baseline's gatewayd for ``gatewayd``


BASE_SUFFIX = "@base"


class ConfigRefused(StartError):
    """``gatewayd check`` refused the row's config (on a baseline: a feature it does not have)."""


# --- the backend -----------------------------------------------------------------------------


def write_www(www: Path) -> None:
    """The backend's files: a 100-byte /small and a 64 MiB /large (random: nothing compresses)."""
    www.mkdir(parents=True)
    (www / "small").write_bytes(SMALL_BODY)
    block = os.urandom(1024 * 1024)
    with open(www / "large", "wb") as out:
        for _ in range(LARGE_SIZE // len(block)):
            out.write(block)


def _render(template: str, **values: str) -> str:
    text = (SUPPORT / template).read_text()
    user = "user root;" if os.geteuid() == 0 else "# not root: workers keep our user"
    text = text.replace("@USER_DIRECTIVE@", user)
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text


@contextmanager
def serving(
    children: Children,
    argv: Sequence[str],
    *,
    what: str,
    core: int | None,
    log: Path,
    ready_url: str,
    env: Mapping[str, str] | None = None,
) -> Iterator[int]:
    """Start ``argv``, wait until ``ready_url`` answers 200, yield its pid, stop it afterwards."""
    proc = children.spawn(argv, core=core, log=log, env=env)
    try:
        wait_ready(ready_url, proc, log=log)
    except StartError as err:
        children.stop(proc)
        raise StartError(f"{what} failed to start: {err}") from None
    try:
        yield proc.pid
    finally:
        children.stop(proc)


@contextmanager
def _nginx(
    children: Children, prefix: Path, conf: str, core: int | None, port: int
) -> Iterator[Target]:
    prefix.mkdir()
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(conf.replace("@PREFIX@", str(prefix)))
    log = prefix / "error.log"
    argv = ["nginx", "-p", str(prefix), "-c", str(conf_path), "-e", str(log)]
    url = f"http://127.0.0.1:{port}"
    what = f"nginx ({prefix.name})"
    with serving(children, argv, what=what, core=core, log=log, ready_url=f"{url}/small") as pid:
        yield Target(url=url, pid=pid)


@contextmanager
def nginx_backend(tmp: Path, children: Children, core: int | None) -> Iterator[Target]:
    """The fixed backend, pinned next to the load generator; lives for the whole run."""
    write_www(tmp / "www")
    port = free_port()
    conf = _render("nginx_backend.conf.tmpl", PORT=str(port), WWW=str(tmp / "www"))
    with _nginx(children, tmp / "backend", conf, core, port) as target:
        yield target


# --- the rows --------------------------------------------------------------------------------


@contextmanager
def direct(ctx: Context) -> Iterator[Target]:
    """No proxy: wrk talks to the backend itself (the RSS column is the backend's)."""
    yield Target(url=ctx.backend_url, pid=ctx.backend_pid)


@contextmanager
def nginx_proxy(ctx: Context) -> Iterator[Target]:
    port = free_port()
    backend_port = ctx.backend_url.rsplit(":", 1)[1]
    conf = _render("nginx_proxy.conf.tmpl", PORT=str(port), BACKEND_PORT=backend_port)
    with _nginx(ctx.children, ctx.tmp / "nginx-proxy", conf, ctx.proxy_core, port) as target:
        yield target


@contextmanager
def minimal_proxy(ctx: Context) -> Iterator[Target]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [ctx.python, str(SUPPORT / "minimal_proxy.py"), str(port), ctx.backend_url]
    log = ctx.tmp / "minimal-proxy.log"
    with serving(
        ctx.children,
        argv,
        what="minimal proxy",
        core=ctx.proxy_core,
        log=log,
        ready_url=f"{url}/small",
    ) as pid:
        yield Target(url=url, pid=pid)


# --- gatewayd --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gatewayd:
    """A running daemon, as a ``started`` hook sees it."""

    url: str
    admin_url: str
    pid: int
    config_path: Path
    workdir: Path


@dataclass(frozen=True)
class RowSetup:
    """Extra set-up for a gatewayd row: config merged in, env for the daemon, client headers.

    ``prefix`` is put in front of the paths wrk loads (``/peer/bench`` + ``/small``);
    ``started(ctx, gw)`` is entered once the daemon is ready and left before it stops (start a
    peer, warm a cache, ...).
    """

    config: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    prefix: str = ""
    started: Callable[[Context, Gatewayd], AbstractContextManager[None]] | None = None


@dataclass(frozen=True)
class GatewaydVariant:
    """One gatewayd row: its name, the route's plugin chain, optional extra set-up.

    ``setup(ctx, state_dir)`` runs before the daemon starts (create keys, seed a store, ...).
    ``expect_headers`` are checked on one response before the load starts, so a row whose
    plugin silently does nothing is caught.
    """

    name: str
    plugins: Sequence[Mapping[str, Any]] = ()
    setup: Callable[[Context, Path], RowSetup] | None = None
    expect_headers: Mapping[str, str] = field(default_factory=dict)


HEADERS = {
    "headers": {
        "request": {"set": {"X-Env": "bench"}},
        "response": {"add": {"X-Served-By": "gatewayd"}},
    }
}
RELAY_LEASE = "bench"
RELAY_ROUTES = [{"name": "peers", "match": {"path": "/peer/"}, "relay": "by_path"}]


def create_key(ctx: Context, state_dir: Path, *args: str) -> str:
    """``gatewayd keys create ARGS`` on the row's key store; returns the key (never printed)."""
    config = state_dir.parent / "keys.yaml"
    config.write_text(json.dumps({"state": {"dir": str(state_dir)}}) + "\n")
    argv = [str(ctx.gatewayd), "keys", "create", "-c", str(config), *args]
    try:
        out = ctx.children.run(argv, core=None, timeout=60)
    except RuntimeError as err:
        raise StartError(f"creating a key failed: {err}") from None
    return out.splitlines()[0].strip()


@contextmanager
def _refuses_without_key(ctx: Context, gw: Gatewayd) -> Iterator[None]:
    """The plugin is on: the same request without the key is refused."""
    status = http_get(f"{gw.url}/small").status
    if status != 401:
        raise StartError(f"GET /small without a key answered {status}, not 401")
    yield


def key_auth_setup(ctx: Context, state_dir: Path) -> RowSetup:
    key = create_key(ctx, state_dir, "--tenant", "bench", "--id", "bench-1")
    headers = {"Authorization": f"Bearer {key}"}
    return RowSetup(headers=headers, started=_refuses_without_key)


@contextmanager
def _warm_cache(ctx: Context, gw: Gatewayd) -> Iterator[None]:
    """One request fills the cache, so the smoke check's must be a HIT."""
    first = http_get(f"{gw.url}/small")
    if first.status != 200 or first.headers.get("x-cache") != "MISS":
        got = first.headers.get("x-cache")
        raise StartError(f"the first GET /small answered {first.status}, X-Cache {got!r}")
    yield


def cache_setup(ctx: Context, state_dir: Path) -> RowSetup:
    return RowSetup(started=_warm_cache)


@contextmanager
def _relay_peer(ctx: Context, gw: Gatewayd, key: str) -> Iterator[None]:
    """``gatewayd peer`` next to the backend (the client core), until the tunnel answers."""
    ws_url = gw.url.replace("http://", "ws://", 1) + "/_relay/connect"
    argv = [str(ctx.gatewayd), "peer", "--gateway", ws_url, "--lease", RELAY_LEASE]
    argv += ["--target", ctx.backend_url, "--key", key, "--log-level", "warning"]
    log = gw.workdir / "peer.log"
    proc = ctx.children.spawn(argv, core=ctx.client_core, log=log, env=_daemon_env({}))
    try:
        wait_ready(f"{gw.url}/peer/{RELAY_LEASE}/small", proc, log=log)
        yield
    except StartError as err:
        raise StartError(f"gatewayd peer failed to connect: {err}") from None
    finally:
        ctx.children.stop(proc)


def relay_setup(ctx: Context, state_dir: Path) -> RowSetup:
    key = create_key(ctx, state_dir, "--tenant", "bench", "--scope", f"relay:{RELAY_LEASE}")
    return RowSetup(
        config={"routes": RELAY_ROUTES},
        prefix=f"/peer/{RELAY_LEASE}",
        started=partial(_relay_peer, key=key),
    )


RATE_LIMIT = {"rate_limit": {"rate": "1000000/s", "burst": 1000000, "key": "ip"}}
# The chain an API operator runs: authenticate, authorise the tenant, limit per key.
API_CHAIN: list[dict[str, Any]] = [
    {"key_auth": {}},
    {"acl": {"allow": ["tenant:bench"]}},
    {"rate_limit": {"rate": "1000000/s", "burst": 1000000, "key": "api_key"}},
]

# One line per row. A row that needs keys or other state passes setup=, which runs before the
# daemon starts and returns a RowSetup (config, client headers, a hook run once it is up).
GATEWAYD_VARIANTS: list[GatewaydVariant] = [
    GatewaydVariant("gatewayd"),
    GatewaydVariant(
        "gatewayd+headers",
        [HEADERS],
        expect_headers={"X-Served-By": "gatewayd", "X-Seen-Env": "bench"},
    ),
    GatewaydVariant("gatewayd+key_auth", [{"key_auth": {}}], setup=key_auth_setup),
    GatewaydVariant(
        "gatewayd+rate_limit", [RATE_LIMIT], expect_headers={"RateLimit-Limit": "1000000"}
    ),
    GatewaydVariant(
        "gatewayd+cache",
        [{"cache": {"default_ttl": "60s"}}],
        setup=cache_setup,
        expect_headers={"X-Cache": "HIT"},
    ),
    GatewaydVariant("gatewayd+relay", setup=relay_setup),
    GatewaydVariant(
        "gatewayd+api_chain",
        API_CHAIN,
        setup=key_auth_setup,
        expect_headers={"RateLimit-Limit": "1000000"},
    ),
]


def gatewayd_config(
    port: int, admin_port: int, state_dir: Path, backend_url: str, plugins: Sequence[Any]
) -> dict[str, Any]:
    """The daemon's config: one listener, one upstream, one catch-all route, access log on."""
    return {
        "listen": [{"address": f"127.0.0.1:{port}"}],
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "state": {"dir": str(state_dir)},
        "logging": {"level": "info", "format": "json", "access_log": True},
        "upstreams": {"bench": {"targets": [backend_url]}},
        "routes": [
            {"name": "bench", "match": {"path": "/"}, "upstream": "bench", "plugins": list(plugins)}
        ],
    }


def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, recursively for nested mappings."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _daemon_env(extra: Mapping[str, str]) -> dict[str, str]:
    """Our environment without anything that would change the daemon's config or behaviour."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GATEWAYD_") and k not in {"NOTIFY_SOCKET", "WATCHDOG_USEC"}
    }
    return env | dict(extra)


def gatewayd_row(variant: GatewaydVariant) -> Row:
    return Row(variant.name, partial(_gatewayd, variant=variant))


def base_row(variant: GatewaydVariant) -> Row:
    """The same row on the baseline's gatewayd (its keys made, its peer run, by that one too)."""
    name = variant.name + BASE_SUFFIX
    return Row(name, partial(_gatewayd, variant=variant, base=True), base_of=variant.name)


@contextmanager
def _gatewayd(ctx: Context, variant: GatewaydVariant, base: bool = False) -> Iterator[Target]:
    name = variant.name
    if base:
        if ctx.base_gatewayd is None:
            raise StartError("no baseline gatewayd (run with --baseline REV)")
        ctx, name = replace(ctx, gatewayd=ctx.base_gatewayd), name + BASE_SUFFIX
    workdir = ctx.tmp / name
    state_dir = workdir / "state"
    state_dir.mkdir(parents=True)
    extra = variant.setup(ctx, state_dir) if variant.setup else RowSetup()
    with ExitStack() as stack:
        gw = stack.enter_context(start_gatewayd(ctx, workdir, variant.plugins, extra))
        if extra.started is not None:
            stack.enter_context(extra.started(ctx, gw))
        yield Target(
            url=gw.url + extra.prefix,
            pid=gw.pid,
            headers=extra.headers,
            expect_headers=variant.expect_headers,
        )


@contextmanager
def start_gatewayd(
    ctx: Context, workdir: Path, plugins: Sequence[Any], extra: RowSetup
) -> Iterator[Gatewayd]:
    """Write the config (the bench route with ``plugins``, ``extra.config`` merged in), start
    the daemon on the proxy core, wait for ``/_ready``, stop it afterwards."""
    if not os.access(ctx.gatewayd, os.X_OK):
        raise StartError(
            f"gatewayd failed to start: {ctx.gatewayd} not found (pip install -e . into .venv)"
        )
    state_dir = workdir / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    port, admin_port = free_port(), free_port()
    config = gatewayd_config(port, admin_port, state_dir, ctx.backend_url, plugins)
    config_path = workdir / "gatewayd.yaml"
    # JSON is valid YAML, and keeps the harness free of third-party imports.
    config_path.write_text(json.dumps(merge(config, extra.config), indent=2) + "\n")
    check_config(ctx, config_path)
    admin_url = f"http://127.0.0.1:{admin_port}"
    with serving(
        ctx.children,
        [str(ctx.gatewayd), "run", "-c", str(config_path)],
        what="gatewayd",
        core=ctx.proxy_core,
        log=workdir / "gatewayd.log",
        ready_url=f"{admin_url}/_ready",
        env=_daemon_env(extra.env),
    ) as pid:
        yield Gatewayd(f"http://127.0.0.1:{port}", admin_url, pid, config_path, workdir)


def check_config(ctx: Context, config_path: Path) -> None:
    """``gatewayd check``: a config this gatewayd refuses is :class:`ConfigRefused`, with its
    one-line reason, rather than a daemon that exits at start."""
    try:
        argv = [str(ctx.gatewayd), "check", "-c", str(config_path)]
        ctx.children.run(argv, core=None, timeout=60)
    except RuntimeError as err:  # "<argv> exited N: <stderr>": keep what gatewayd said
        said = re.search(r" exited -?\d+: (.*)", str(err), re.S)
        reason = said.group(1).strip() if said else str(err)
        raise ConfigRefused(f"{ctx.gatewayd} check refuses the config: {reason}") from None


def all_rows(baseline: bool = False) -> list[Row]:
    """Every row; with ``baseline``, each gatewayd row is followed by its ``@base`` row (so the
    two run next to each other in every round)."""
    rows = [Row("direct", direct), Row("nginx", nginx_proxy), Row("minimal", minimal_proxy)]
    for variant in GATEWAYD_VARIANTS:
        rows.append(gatewayd_row(variant))
        if baseline:
            rows.append(base_row(variant))
    return rows
