"""What the benchmark measures: the backend, and each proxy in front of it.

A row starts its proxy (pinned to the proxy core), yields a :class:`Target` to load, and stops
it when the ``with`` ends. gatewayd rows are data: add one :class:`GatewaydVariant` line to
``GATEWAYD_VARIANTS`` to benchmark another plugin chain.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from .procs import Children, StartError, free_port, wait_ready

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
class RowSetup:
    """Extra set-up for a gatewayd row: config merged in, env for the daemon, client headers."""

    config: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)


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

# One line per row. A row that needs keys or other state passes setup=, e.g.
#   GatewaydVariant("gatewayd+key_auth", [{"key_auth": {}}], setup=make_bench_key),
# where make_bench_key(ctx, state_dir) creates a key and returns RowSetup(headers={...}).
GATEWAYD_VARIANTS: list[GatewaydVariant] = [
    GatewaydVariant("gatewayd"),
    GatewaydVariant(
        "gatewayd+headers",
        [HEADERS],
        expect_headers={"X-Served-By": "gatewayd", "X-Seen-Env": "bench"},
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


@contextmanager
def _gatewayd(ctx: Context, variant: GatewaydVariant) -> Iterator[Target]:
    if not os.access(ctx.gatewayd, os.X_OK):
        raise StartError(
            f"gatewayd failed to start: {ctx.gatewayd} not found (pip install -e . into .venv)"
        )
    workdir = ctx.tmp / variant.name
    state_dir = workdir / "state"
    state_dir.mkdir(parents=True)
    extra = variant.setup(ctx, state_dir) if variant.setup else RowSetup()
    port, admin_port = free_port(), free_port()
    config = gatewayd_config(port, admin_port, state_dir, ctx.backend_url, variant.plugins)
    config_path = workdir / "gatewayd.yaml"
    # JSON is valid YAML, and keeps the harness free of third-party imports.
    config_path.write_text(json.dumps(merge(config, extra.config), indent=2) + "\n")
    with serving(
        ctx.children,
        [str(ctx.gatewayd), "run", "-c", str(config_path)],
        what="gatewayd",
        core=ctx.proxy_core,
        log=workdir / "gatewayd.log",
        ready_url=f"http://127.0.0.1:{admin_port}/_ready",
        env=_daemon_env(extra.env),
    ) as pid:
        yield Target(
            url=f"http://127.0.0.1:{port}",
            pid=pid,
            headers=extra.headers,
            expect_headers=variant.expect_headers,
        )


def all_rows() -> list[Row]:
    rows = [Row("direct", direct), Row("nginx", nginx_proxy), Row("minimal", minimal_proxy)]
    return rows + [gatewayd_row(v) for v in GATEWAYD_VARIANTS]
