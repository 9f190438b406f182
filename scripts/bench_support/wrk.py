"""Running wrk and reading its ``--latency`` report."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .procs import Children

_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


class WrkError(RuntimeError):
    """wrk failed or printed something we cannot read."""


@dataclass(frozen=True)
class WrkResult:
    requests_per_sec: float
    transfer_bytes_per_sec: float
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    non_2xx: int
    socket_errors: int

    @property
    def transfer_mib_per_sec(self) -> float:
        return self.transfer_bytes_per_sec / 1024**2


@dataclass(frozen=True)
class Load:
    """How hard and how long to hit one URL."""

    url: str
    duration: float
    connections: int
    threads: int
    headers: Mapping[str, str]


def run_wrk(children: Children, load: Load, *, core: int | None) -> WrkResult:
    argv = [
        "wrk",
        f"--threads={min(load.threads, load.connections)}",
        f"--connections={load.connections}",
        f"--duration={max(1, round(load.duration))}s",
        "--timeout=10s",
        "--latency",
    ]
    for name, value in load.headers.items():
        argv += ["--header", f"{name}: {value}"]
    argv.append(load.url)
    out = children.run(argv, core=core, timeout=load.duration + 30)
    return parse_wrk(out)


def parse_wrk(out: str) -> WrkResult:
    rps = _search(r"^Requests/sec:\s+([\d.]+)", out)
    transfer = re.search(r"^Transfer/sec:\s+([\d.]+)([KMGT]?B)", out, re.M)
    requests = _search(r"^\s*(\d+) requests in ", out)
    if rps is None or transfer is None or requests is None:
        raise WrkError(f"cannot read wrk output:\n{out}")
    return WrkResult(
        requests_per_sec=float(rps),
        transfer_bytes_per_sec=float(transfer.group(1)) * _SIZE_UNITS[transfer.group(2)],
        p50_ms=_percentile_ms(out, "50"),
        p99_ms=_percentile_ms(out, "99"),
        requests=int(requests),
        non_2xx=int(_search(r"Non-2xx or 3xx responses:\s+(\d+)", out) or 0),
        socket_errors=_socket_errors(out),
    )


def _search(pattern: str, text: str) -> str | None:
    match = re.search(pattern, text, re.M)
    return match.group(1) if match else None


def _percentile_ms(out: str, pct: str) -> float | None:
    match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m|h)\s*$", out, re.M)
    return float(match.group(1)) * _TIME_UNITS_MS[match.group(2)] if match else None


def _socket_errors(out: str) -> int:
    match = re.search(r"Socket errors:(.*)$", out, re.M)
    return sum(int(n) for n in re.findall(r"\d+", match.group(1))) if match else 0
