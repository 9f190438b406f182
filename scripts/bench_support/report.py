"""The one table (markdown, so it pastes into docs) and the same numbers as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .wrk import WrkResult

COLUMNS = (
    "row",
    "req/s",
    "p50 ms",
    "p99 ms",
    "x nginx",
    "x minimal",
    "MiB/s (64 MiB)",
    "peak RSS MiB",
)


@dataclass
class RowResult:
    name: str
    small: WrkResult | None = None
    large: WrkResult | None = None
    peak_rss_mib: float | None = None
    error: str | None = None
    other_cpu_cores: float | None = None  # CPU other processes used while this row ran

    def rps(self) -> float | None:
        return self.small.requests_per_sec if self.small else None


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _by_name(results: Sequence[RowResult], name: str) -> float | None:
    return next((r.rps() for r in results if r.name == name), None)


def table_rows(results: Sequence[RowResult]) -> list[dict[str, Any]]:
    """One plain dict per row, with the ratios filled in (what the table and the JSON show)."""
    nginx, minimal = _by_name(results, "nginx"), _by_name(results, "minimal")
    rows = []
    for r in results:
        rows.append(
            {
                "row": r.name,
                "requests_per_sec": r.rps(),
                "p50_ms": r.small.p50_ms if r.small else None,
                "p99_ms": r.small.p99_ms if r.small else None,
                "ratio_to_nginx": _ratio(r.rps(), nginx),
                "ratio_to_minimal": _ratio(r.rps(), minimal),
                "large_mib_per_sec": r.large.mib_per_sec if r.large else None,
                "peak_rss_mib": r.peak_rss_mib,
                "other_cpu_cores": r.other_cpu_cores,
                "error": r.error,
                "small": asdict(r.small) if r.small else None,
                "large": asdict(r.large) if r.large else None,
            }
        )
    return rows


def _cells(row: dict[str, Any]) -> list[str]:
    if row["error"] and row["requests_per_sec"] is None:
        return [row["row"], "FAILED", *["-"] * (len(COLUMNS) - 2)]
    return [
        row["row"],
        _fmt(row["requests_per_sec"], ",.0f"),
        _fmt(row["p50_ms"], ".2f"),
        _fmt(row["p99_ms"], ".2f"),
        _fmt(row["ratio_to_nginx"], ".2f"),
        _fmt(row["ratio_to_minimal"], ".2f"),
        _fmt(row["large_mib_per_sec"], ",.0f"),
        _fmt(row["peak_rss_mib"], ".1f"),
    ]


def render_table(rows: Sequence[dict[str, Any]]) -> str:
    return render_extra(COLUMNS, [_cells(r) for r in rows])


def render_extra(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table: the first column left-aligned, the others right-aligned."""
    cells = [list(columns), *(list(r) for r in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        padded = [
            v.ljust(w) if i == 0 else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(c) for c in cells[1:])])


def notes(results: Sequence[RowResult], noise: float = 0.05) -> list[str]:
    """Failures and anything that makes a number suspect (errors, other load on the CPUs)."""
    out = []
    for r in results:
        if r.error:
            out.append(f"{r.name}: {r.error}")
        if r.other_cpu_cores is not None and r.other_cpu_cores > noise:
            out.append(
                f"{r.name}: other processes used {r.other_cpu_cores:.2f} of a core while it ran; "
                "its numbers are suspect (run the bench on a quiet machine)"
            )
        for label, res in (("small", r.small), ("large", r.large)):
            if res and (res.non_2xx or res.socket_errors):
                out.append(
                    f"{r.name} ({label}): {res.non_2xx} non-2xx responses, "
                    f"{res.socket_errors} socket errors out of {res.requests} requests"
                )
    return out


def extra_notes(extras: Sequence[Any], noise: float = 0.05) -> list[str]:
    """The same notes for the extra parts (WebSocket, SSE, relay idle)."""
    out = []
    for e in extras:
        if e.error:
            out.append(f"{e.name}: {e.error}")
        if e.other_cpu_cores is not None and e.other_cpu_cores > noise:
            out.append(
                f"{e.name}: other processes used {e.other_cpu_cores:.2f} of a core while it ran; "
                "its numbers are suspect (run the bench on a quiet machine)"
            )
    return out


def extra_json(extras: Sequence[Any]) -> dict[str, Any]:
    return {
        e.name: {"data": e.data, "error": e.error, "other_cpu_cores": e.other_cpu_cores}
        for e in extras
    }


def write_json(
    path: Path,
    meta: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    extras: dict[str, Any] | None = None,
) -> None:
    doc = {"meta": meta, "rows": list(rows), "extras": extras or {}}
    path.write_text(json.dumps(doc, indent=2) + "\n")
