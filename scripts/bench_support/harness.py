"""scripts/bench: gatewayd against nginx and a minimal aiohttp proxy, on pinned cores.

See docs/benchmarks.md for the method. Only the standard library is used here; the processes
under test run in the project's .venv.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from . import baseline, report
from .extras import EXTRAS, Extra, ExtraResult, ExtraSettings, measure_extra
from .procs import (
    Children,
    StartError,
    http_get,
    other_cpu_delta,
    other_cpu_seconds,
    peak_rss_mib,
)
from .targets import (
    BASE_SUFFIX,
    SMALL_BODY,
    ConfigRefused,
    Context,
    Row,
    Target,
    all_rows,
    nginx_backend,
)
from .wrk import Load, WrkError, WrkResult, run_wrk

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv"


class SmokeError(RuntimeError):
    """The target answered, but not what the backend serves."""


@dataclass(frozen=True)
class Settings:
    duration: float
    warmup: float
    connections: int
    threads: int
    large_duration: float
    large_connections: int
    client_core: int | None
    rounds: int = 3


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    names = ", ".join([r.name for r in all_rows()] + [e.name for e in EXTRAS])
    names += f" (with --baseline, also <gatewayd row>{BASE_SUFFIX})"
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark gatewayd against nginx and a minimal aiohttp proxy "
        "(docs/benchmarks.md). Load generator and backend on one core, proxy on the other.",
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per row and round (8)")
    parser.add_argument(
        "--rounds",
        type=_positive,
        default=3,
        help="rounds of GET /small over all rows; figures are medians (3)",
    )
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unrecorded seconds first (2)")
    parser.add_argument(
        "--large-duration",
        type=float,
        default=4.0,
        help="seconds of 64 MiB downloads per row and round (4)",
    )
    parser.add_argument(
        "--large-connections", type=int, default=1, help="parallel 64 MiB downloads (1)"
    )
    parser.add_argument(
        "--ws-duration", type=float, default=5.0, help="seconds of WebSocket echo, each way (5)"
    )
    parser.add_argument(
        "--ws-connections", type=int, default=50, help="WebSocket echo connections (50)"
    )
    parser.add_argument(
        "--sse-clients", default="1000,3000", help="SSE fan-out client counts (1000,3000)"
    )
    parser.add_argument(
        "--relay-peers", type=int, default=1000, help="idle relay peer connections (1000)"
    )
    parser.add_argument("--only", help=f"comma-separated rows and parts to run, of: {names}")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--python",
        default=str(VENV / "bin/python") if (VENV / "bin/python").exists() else sys.executable,
        help="interpreter for the minimal proxy and the baseline's venv (default: .venv's)",
    )
    parser.add_argument(
        "--gatewayd", type=Path, default=VENV / "bin/gatewayd", help="the gatewayd executable"
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run every gatewayd row on REV's gatewayd (a temporary git worktree and "
        "venv) as <row>@base, in the same rounds, and compare (default: none)",
    )
    parser.add_argument(
        "--keep-tmp", action="store_true", help="keep configs and logs (and the baseline's tree)"
    )
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def select_rows(
    rows: list[Row], extras: list[Extra], only: str | None
) -> tuple[list[Row], list[Extra]]:
    """The rows and parts ``--only`` names; a gatewayd row brings its ``@base`` row along."""
    if not only:
        return rows, extras
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    known = [r.name for r in rows] + [e.name for e in extras]
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        hint = ""
        if any(name.endswith(BASE_SUFFIX) for name in unknown):
            hint = f"; {BASE_SUFFIX} rows need --baseline REV"
        raise SystemExit(
            f"scripts/bench: unknown row(s) {', '.join(unknown)} (known: {', '.join(known)}{hint})"
        )
    chosen = [r for r in rows if r.name in wanted or r.base_of in wanted]
    return chosen, [e for e in extras if e.name in wanted]


def pick_cores() -> tuple[int | None, int | None]:
    """(load generator + backend core, proxy core): the first two CPUs we may run on."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        progress("warning: fewer than 2 CPUs; everything shares one core")
        return cores[0], cores[0]
    return cores[0], cores[1]


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def smoke_check(target: Target) -> None:
    """One request through the target before loading it: the body and headers must be right."""
    resp = http_get(f"{target.url}/small", headers=target.headers)
    if resp.status != 200 or resp.body != SMALL_BODY:
        raise SmokeError(f"GET /small answered {resp.status} with {resp.body[:200]!r}")
    for name, value in target.expect_headers.items():
        got = resp.headers.get(name.lower())
        if got != value:
            raise SmokeError(f"GET /small: expected header {name}: {value}, got {got!r}")


def _wrk(children: Children, s: Settings, target: Target, path: str, large: bool) -> WrkResult:
    load = Load(
        url=target.url + path,
        duration=s.large_duration if large else s.duration,
        connections=s.large_connections if large else s.connections,
        threads=1 if large else s.threads,
        headers=target.headers,
    )
    return run_wrk(children, load, core=s.client_core)


def _warm_up(children: Children, s: Settings, target: Target) -> None:
    if s.warmup > 0:
        load = Load(target.url + "/small", s.warmup, s.connections, s.threads, target.headers)
        run_wrk(children, load, core=s.client_core)


def _start(row: Row, ctx: Context, stack: ExitStack, result: report.RowResult) -> Target | None:
    """Start the row's target and smoke-check it; None (and ``result.error``) if that failed.
    The target stays up until ``stack`` closes."""
    progress(f"{row.name}: starting")
    try:
        target = stack.enter_context(row.start(ctx))
        smoke_check(target)
        return target
    except ConfigRefused as err:
        if result.base_of is None:
            result.error = str(err)
        else:  # the baseline predates something this row uses: say so, it is not a failure
            result.unsupported = str(err)
            progress(f"{row.name}: not run: the baseline cannot run this row: {err}")
            return None
    except (StartError, SmokeError, WrkError) as err:
        result.error = str(err)
    except Exception as err:  # a broken row must not end the run: report it and go on
        result.error = f"{type(err).__name__}: {err}"
    progress(f"{row.name}: FAILED: {result.error}")
    return None


def _load(result: report.RowResult, ctx: Context, s: Settings, target: Target, what: str) -> None:
    """One measured wrk run on the row (``small``: a round of GET /small; ``large``: the 64 MiB
    download), with the CPU time other processes used meanwhile."""
    others, started = other_cpu_seconds(ctx.children), time.monotonic()
    try:
        if what == "small":
            result.rounds.append(_wrk(ctx.children, s, target, "/small", large=False))
        else:
            result.large_rounds.append(_wrk(ctx.children, s, target, "/large", large=True))
    except WrkError as err:
        result.error = str(err)
        progress(f"{result.name}: FAILED: {err}")
    except Exception as err:
        result.error = f"{type(err).__name__}: {err}"
        progress(f"{result.name}: FAILED: {result.error}")
    result.other_cpu_seconds += other_cpu_delta(others, other_cpu_seconds(ctx.children))
    result.measured_seconds += time.monotonic() - started


def measure(rows: Sequence[Row], ctx: Context, s: Settings) -> list[report.RowResult]:
    """Start every row's target (each idle while the others are loaded), then ``s.rounds``
    rounds over all of them (GET /small, then the 64 MiB download), each round in a rotated
    order, so that the machine's drift and bursts of noise fall on every row alike; then each
    row's peak RSS. A row's figures are the medians of its rounds."""
    results = [report.RowResult(row.name, base_of=row.base_of) for row in rows]
    with ExitStack() as stack:
        live: list[tuple[report.RowResult, Target]] = []
        for row, result in zip(rows, results, strict=True):
            target = _start(row, ctx, stack, result)
            if target is not None:
                if s.warmup > 0:
                    _warm_up(ctx.children, s, target)
                live.append((result, target))
        for n in range(s.rounds):
            order = live[n % len(live) :] + live[: n % len(live)] if live else []
            for result, target in order:
                if result.error:
                    continue
                progress(
                    f"round {n + 1}/{s.rounds}: {result.name}: {s.duration:g}s of GET /small "
                    f"({s.connections} connections), {s.large_duration:g}s of GET /large (64 MiB)"
                )
                _load(result, ctx, s, target, "small")
                _load(result, ctx, s, target, "large")
        for result, target in live:
            result.peak_rss_mib = peak_rss_mib(target.pid)
    return results


def run_rows(
    rows: Sequence[Row],
    extras: Sequence[Extra],
    tmp: Path,
    args: argparse.Namespace,
    cores: tuple[int | None, int | None],
    meta: dict[str, Any],
) -> tuple[list[report.RowResult], list[ExtraResult]]:
    client_core, proxy_core = cores
    settings = Settings(
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        threads=args.threads,
        large_duration=args.large_duration,
        large_connections=args.large_connections,
        client_core=client_core,
        rounds=args.rounds,
    )
    extra_settings = ExtraSettings(
        ws_duration=args.ws_duration,
        ws_connections=args.ws_connections,
        ws_size=64,
        sse_clients=args.sse_clients,
        relay_peers=args.relay_peers,
        relay_hold=5.0,
    )
    with Children() as children, ExitStack() as stack:
        base_gatewayd = None
        if args.baseline and any(r.base_of for r in rows):
            base_gatewayd = _prepare_baseline(stack, children, tmp, args, meta)
        progress(f"backend: nginx on core {client_core}, 64 MiB file in {tmp}")
        with nginx_backend(tmp, children, client_core) as backend:
            ctx = Context(
                tmp=tmp,
                children=children,
                backend_url=backend.url,
                backend_pid=backend.pid,
                python=args.python,
                gatewayd=args.gatewayd,
                proxy_core=proxy_core,
                client_core=client_core,
                base_gatewayd=base_gatewayd,
            )
            results = measure(rows, ctx, settings)
            extra_results = []
            for extra in extras:
                progress(f"{extra.name}: starting")
                extra_results.append(measure_extra(extra, ctx, extra_settings))
                if extra_results[-1].error:
                    progress(f"{extra.name}: FAILED: {extra_results[-1].error}")
            return results, extra_results


def _prepare_baseline(
    stack: ExitStack, children: Children, tmp: Path, args: argparse.Namespace, meta: dict[str, Any]
) -> Path:
    """Check out and install ``--baseline`` (removed when ``stack`` closes, unless --keep-tmp);
    its description goes into ``meta``; returns its gatewayd."""
    progress(f"baseline: git worktree of {args.baseline} and a venv for it in {tmp}")
    base = stack.enter_context(
        baseline.prepare(ROOT, args.baseline, tmp, children, args.python, keep=args.keep_tmp)
    )
    probe = [str(base.python), "-c", _PROBE]
    meta["baseline"] = base.describe() | {
        "gatewayd": _version([str(base.gatewayd), "version"]),
        "python_aiohttp_uvloop": _version(probe),
    }
    how = "our dependency versions" if base.pinned else "its own dependency versions (see meta)"
    progress(f"baseline: {args.baseline} = {base.commit[:12]} installed with {how}")
    if base.differs:
        listed = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in sorted(base.differs.items()))
        progress(f"baseline: dependencies that differ from ours: {listed}")
    if args.keep_tmp:
        progress(f"baseline: keeping {base.worktree} (git worktree remove --force {base.worktree})")
    return base.gatewayd


_PROBE = (
    "import sys, aiohttp, uvloop;"
    "print(sys.version.split()[0], aiohttp.__version__, uvloop.__version__)"
)


def _version(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unknown ({err})"
    lines = (done.stdout + done.stderr).strip().splitlines()  # wrk --version exits 1
    return lines[0] if lines else f"? (exit {done.returncode})"


def metadata(args: argparse.Namespace, cores: tuple[int | None, int | None]) -> dict[str, Any]:
    client_core, proxy_core = cores
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "kernel": platform.release(),
        "cpu": _cpu_model(),
        "cores": {"client_and_backend": client_core, "proxy": proxy_core},
        "cpu_busy_before_start": round(cpu_busy(), 2),
        "duration_s": args.duration,
        "rounds": args.rounds,
        "warmup_s": args.warmup,
        "connections": args.connections,
        "threads": args.threads,
        "large_duration_s": args.large_duration,
        "large_connections": args.large_connections,
        "nginx": _version(["nginx", "-v"]),
        "wrk": _version(["wrk", "--version"]),
        "python_aiohttp_uvloop": _version([args.python, "-c", _PROBE]),
        "gatewayd": _version([str(args.gatewayd), "version"]),
        "tree": baseline.describe_tree(ROOT),  # what the rows without @base run
        "baseline": None,
    }


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs, from the first line of /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def cpu_busy(sample: float = 1.0) -> float:
    """The fraction of all CPU time something else used during ``sample`` seconds."""
    busy0, total0 = _cpu_times()
    time.sleep(sample)
    busy1, total1 = _cpu_times()
    return (busy1 - busy0) / max(1, total1 - total0)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _missing_tools() -> list[str]:
    return [tool for tool in ("nginx", "wrk", "taskset") if shutil.which(tool) is None]


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rows, extras = select_rows(all_rows(baseline=bool(args.baseline)), EXTRAS, args.only)
    if args.baseline:
        try:
            baseline.resolve(ROOT, args.baseline)
        except baseline.BaselineError as err:
            print(f"scripts/bench: {err}", file=sys.stderr)
            return 2
        if not any(r.base_of for r in rows):
            progress("warning: --baseline, but no gatewayd row is selected: nothing to compare")
    missing = _missing_tools()
    if missing:
        print(f"scripts/bench: not on PATH: {', '.join(missing)}", file=sys.stderr)
        return 2
    # Ctrl-C, SIGTERM and SIGHUP all stop the children and end the run (even when started
    # from a shell that made us ignore SIGINT).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    cores = pick_cores()
    meta = metadata(args, cores)
    if meta["cpu_busy_before_start"] > 0.1:
        busy = meta["cpu_busy_before_start"]
        progress(f"warning: the CPUs were {busy:.0%} busy before we started: expect noise")
    tmp = Path(tempfile.mkdtemp(prefix="gatewayd-bench-"))
    try:
        results, extra_results = run_rows(rows, extras, tmp, args, cores, meta)
    except KeyboardInterrupt:
        print("scripts/bench: interrupted; every child process was stopped", file=sys.stderr)
        return 130
    except baseline.BaselineError as err:
        print(f"scripts/bench: the baseline: {err}", file=sys.stderr)
        return 2
    finally:
        if args.keep_tmp:
            progress(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return _print_report(results, extra_results, meta, args.json)


def _print_report(
    results: Sequence[report.RowResult],
    extras: Sequence[ExtraResult],
    meta: dict[str, Any],
    json_path: Path | None,
) -> int:
    rows = report.table_rows(results)
    print(
        f"\ngatewayd bench: {meta['rounds']} rounds of {meta['duration_s']:g}s per row (figures "
        f"are medians), {meta['connections']} connections, "
        f"wrk + backend on core {meta['cores']['client_and_backend']}, "
        f"proxy on core {meta['cores']['proxy']}; {meta['cpu']}; "
        f"CPUs {meta['cpu_busy_before_start']:.0%} busy before start\n"
    )
    if rows:
        print(report.render_table(rows))
    for extra in extras:
        print(f"\n{extra.title or extra.name}\n")
        print(report.render_extra(extra.columns, extra.rows) if extra.rows else "FAILED")
    checks = report.floors(results)
    if checks:
        print("\nFloors (docs/benchmarks.md):")
        for check in checks:
            print(f"  {check}")
    comparison = report.vs_baseline(results)
    if meta["baseline"] is not None:
        base = meta["baseline"]
        print(f"\nvs baseline {base['rev']} ({base['commit'][:12]}; these rows: {meta['tree']}):")
        for text in report.render_vs_baseline(comparison):
            print(f"  {text}")
    for note in report.notes(results) + report.extra_notes(extras):
        print(f"\n* {note}")
    if json_path is not None:
        report.write_json(json_path, meta, rows, report.extra_json(extras), comparison)
    failed = any(r.error for r in results) or any(e.error for e in extras)
    return 1 if failed else 0
