"""Running wrk, with report.lua printing its summary as one exact line."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .procs import Children

REPORT_LUA = Path(__file__).resolve().parent / "report.lua"


class WrkError(RuntimeError):
    """wrk failed or printed something we cannot read."""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    bytes_read: int
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int

    @property
    def requests_per_sec(self) -> float:
        return self.requests / self.duration_s

    @property
    def mib_per_sec(self) -> float:
        return self.bytes_read / self.duration_s / 1024**2


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
        f"--script={REPORT_LUA}",
    ]
    for name, value in load.headers.items():
        argv += ["--header", f"{name}: {value}"]
    argv.append(load.url)
    return parse_wrk(children.run(argv, core=core, timeout=load.duration + 30))


def parse_wrk(out: str) -> WrkResult:
    match = re.search(r"^BENCH (.*)$", out, re.M)
    if match is None:
        raise WrkError(f"no BENCH line in wrk's output:\n{out}")
    fields = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(1))}
    if not fields.get("duration_us"):
        raise WrkError(f"wrk ran for no time:\n{out}")
    return WrkResult(
        requests=fields["requests"],
        duration_s=fields["duration_us"] / 1e6,
        bytes_read=fields["bytes"],
        p50_ms=fields["p50_us"] / 1000,
        p99_ms=fields["p99_us"] / 1000,
        non_2xx=fields["status_errors"],
        socket_errors=sum(fields[f"{kind}_errors"] for kind in ("connect", "read", "write"))
        + fields["timeouts"],
    )
