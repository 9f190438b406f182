"""The one table (markdown, so it pastes into docs) and the same numbers as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from .wrk import WrkResult

COLUMNS = (
    "row",
    "req/s",
    "spread",
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
    rounds: list[WrkResult] = field(default_factory=list)  # GET /small, one per round
    large_rounds: list[WrkResult] = field(default_factory=list)  # GET /large, one per round
    peak_rss_mib: float | None = None
    error: str | None = None
    other_cpu_seconds: float = 0.0  # CPU time other processes used while this row was loaded
    measured_seconds: float = 0.0
    base_of: str | None = None  # an @base row: the row it is the baseline of
    unsupported: str | None = None  # an @base row the baseline cannot run (why), not a failure

    @property
    def other_cpu_cores(self) -> float | None:
        if not self.measured_seconds:
            return None
        return self.other_cpu_seconds / self.measured_seconds

    def rps(self) -> float | None:
        return median([r.requests_per_sec for r in self.rounds]) if self.rounds else None

    def p50(self) -> float | None:
        return median([r.p50_ms for r in self.rounds]) if self.rounds else None

    def p99(self) -> float | None:
        return median([r.p99_ms for r in self.rounds]) if self.rounds else None

    def large_mib(self) -> float | None:
        if not self.large_rounds:
            return None
        return median([r.mib_per_sec for r in self.large_rounds])

    def spread(self) -> float | None:
        """(max - min) / median of the rounds' requests/s: how far to trust the row."""
        rps = [r.requests_per_sec for r in self.rounds]
        return (max(rps) - min(rps)) / median(rps) if len(rps) > 1 else None


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
                "spread": r.spread(),
                "p50_ms": r.p50(),
                "p99_ms": r.p99(),
                "ratio_to_nginx": _ratio(r.rps(), nginx),
                "ratio_to_minimal": _ratio(r.rps(), minimal),
                "large_mib_per_sec": r.large_mib(),
                "peak_rss_mib": r.peak_rss_mib,
                "other_cpu_cores": r.other_cpu_cores,
                "error": r.error,
                "baseline_of": r.base_of,
                "unsupported_on_baseline": r.unsupported,
                "rounds": [asdict(w) | {"requests_per_sec": w.requests_per_sec} for w in r.rounds],
                "large_rounds": [
                    asdict(w) | {"mib_per_sec": w.mib_per_sec} for w in r.large_rounds
                ],
            }
        )
    return rows


def _cells(row: dict[str, Any]) -> list[str]:
    if row["unsupported_on_baseline"]:
        return [row["row"], "not on base", *["-"] * (len(COLUMNS) - 2)]
    if row["error"] and row["requests_per_sec"] is None:
        return [row["row"], "FAILED", *["-"] * (len(COLUMNS) - 2)]
    return [
        row["row"],
        _fmt(row["requests_per_sec"], ",.0f"),
        "-" if row["spread"] is None else f"{row['spread']:.0%}",
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


def _suspect(
    name: str, error: str | None, other_cpu_cores: float | None, noise: float
) -> list[str]:
    """A part's failure, and a warning when other processes used the CPUs while it ran."""
    out = [f"{name}: {error}"] if error else []
    if other_cpu_cores is not None and other_cpu_cores > noise:
        out.append(
            f"{name}: other processes used {other_cpu_cores:.2f} of a core while it ran; "
            "its numbers are suspect (run the bench on a quiet machine)"
        )
    return out


def notes(results: Sequence[RowResult], noise: float = 0.05) -> list[str]:
    """Failures and anything that makes a number suspect (errors, other load on the CPUs)."""
    out = []
    for r in results:
        out += _suspect(r.name, r.error, r.other_cpu_cores, noise)
        if r.unsupported:
            out.append(f"{r.name}: not run, the baseline cannot run this row: {r.unsupported}")
        runs = [("small", w) for w in r.rounds] + [("large", w) for w in r.large_rounds]
        for label, res in runs:
            if res and (res.non_2xx or res.socket_errors):
                out.append(
                    f"{r.name} ({label}): {res.non_2xx} non-2xx responses, "
                    f"{res.socket_errors} socket errors out of {res.requests} requests"
                )
    return out


def _row(results: Sequence[RowResult], name: str) -> RowResult | None:
    return next((r for r in results if r.name == name and r.rounds), None)


def _per_round(a: RowResult, b: RowResult) -> str:
    pairs = zip(a.rounds, b.rounds, strict=False)
    return ", ".join(f"{x.requests_per_sec / y.requests_per_sec:.2f}" for x, y in pairs)


def floors(results: Sequence[RowResult]) -> list[str]:
    """The project's performance floors (docs/benchmarks.md), checked on this run's medians,
    with the per-round ratios (rounds are interleaved, so round k of two rows ran close in
    time)."""
    out = []
    gw, minimal = _row(results, "gatewayd"), _row(results, "minimal")

    def line(ok: bool, text: str) -> None:
        out.append(f"[{'ok' if ok else 'BELOW'}] {text}")

    if gw is not None and minimal is not None:
        ratio = (gw.rps() or 0) / (minimal.rps() or 1)
        line(
            ratio >= 0.9,
            f"gatewayd / minimal req/s = {ratio:.2f} (floor 0.90; rounds: "
            f"{_per_round(gw, minimal)})",
        )
        g, m = gw.large_mib(), minimal.large_mib()
        if g is not None and m is not None:
            line(
                g >= m,
                f"gatewayd streams 64 MiB at {g:,.0f} MiB/s, minimal {m:,.0f} "
                "(floor: at least as fast)",
            )
    if gw is not None:
        p99 = gw.p99() or 0
        line(p99 < 20, f"gatewayd p99 = {p99:.1f} ms (floor < 20 ms)")
        # (row, its req/s as a share of gatewayd's must be: at least, or more than (strict))
        for name, floor, strict, text in (
            (
                "gatewayd+rate_limit",
                0.9,
                False,
                "rate_limit costs {cost:.1%} of req/s (floor < 10 %)",
            ),
            ("gatewayd+key_auth", 0.9, False, "key_auth costs {cost:.1%} of req/s (floor < 10 %)"),
            (
                "gatewayd+api_chain",
                0.85,
                False,
                "key_auth + acl + rate_limit keep {x:.2f}x gatewayd's req/s (floor >= 0.85)",
            ),
            (
                "gatewayd+cache",
                1.0,
                True,
                "the cache hit path serves {x:.2f}x gatewayd (floor > 1)",
            ),
        ):
            row = _row(results, name)
            if row is None:
                continue
            x = (row.rps() or 0) / (gw.rps() or 1)
            ok = x > floor if strict else x >= floor
            line(ok, text.format(cost=1 - x, x=x) + f"; rounds: {_per_round(row, gw)}")
    return out


MAX_LOSS = 0.05  # no row may lose more than this share of its req/s against its @base row


def _change(value: float | None, base: float | None) -> float | None:
    return value / base - 1 if value is not None and base else None


def _round_ratios(a: Sequence[WrkResult], b: Sequence[WrkResult], mib: bool) -> list[float]:
    """Round k of a row over round k of its @base row (they ran next to each other)."""
    if mib:
        return [x.mib_per_sec / y.mib_per_sec for x, y in zip(a, b, strict=False) if y.mib_per_sec]
    pairs = zip(a, b, strict=False)
    return [x.requests_per_sec / y.requests_per_sec for x, y in pairs if y.requests_per_sec]


def vs_baseline(results: Sequence[RowResult], noise: float = 0.05) -> list[dict[str, Any]]:
    """Each row that has an @base row, against it: req/s and the 64 MiB stream's MiB/s, as the
    ratio of medians and per round; ``status`` says whether there is anything to compare, and
    ``suspect`` whether other processes used the CPUs while either side ran."""
    out = []
    for base in results:
        if base.base_of is None:
            continue
        row = next((r for r in results if r.name == base.base_of), None)
        if row is None:
            continue
        if base.unsupported:
            status, reason = "unsupported", base.unsupported
        elif row.error or base.error or not row.rounds or not base.rounds:
            status, reason = "failed", row.error or base.error or "no rounds"
        else:
            status, reason = "ok", None
        out.append(
            {
                "row": row.name,
                "base_row": base.name,
                "status": status,
                "reason": reason,
                "requests_per_sec": row.rps(),
                "base_requests_per_sec": base.rps(),
                "change": _change(row.rps(), base.rps()),
                "round_ratios": _round_ratios(row.rounds, base.rounds, mib=False),
                "large_mib_per_sec": row.large_mib(),
                "base_large_mib_per_sec": base.large_mib(),
                "large_change": _change(row.large_mib(), base.large_mib()),
                "large_round_ratios": _round_ratios(row.large_rounds, base.large_rounds, mib=True),
                "suspect": any((r.other_cpu_cores or 0) > noise for r in (row, base)),
            }
        )
    return out


def baseline_floor(comparison: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """No row loses more than MAX_LOSS of its req/s: checked on the rows that have a figure
    on both sides; the others are listed, since a check over fewer rows says less."""
    measured = [c for c in comparison if c["status"] == "ok" and c["change"] is not None]
    if not comparison:
        return None
    worst = min(measured, key=lambda c: c["change"], default=None)
    return {
        "max_loss": MAX_LOSS,
        "ok": bool(measured) and all(c["change"] >= -MAX_LOSS for c in measured),
        "worst_row": worst["row"] if worst else None,
        "worst_change": worst["change"] if worst else None,
        "below": [c["row"] for c in measured if c["change"] < -MAX_LOSS],
        "not_compared": {c["row"]: c["status"] for c in comparison if c not in measured},
    }


def _ratios(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def render_vs_baseline(comparison: Sequence[dict[str, Any]]) -> list[str]:
    """The lines under the table: req/s per row against its @base row, the floor, then the
    64 MiB stream's MiB/s (reported, no floor)."""
    if not comparison:
        return []
    width = max(len(c["row"]) for c in comparison)
    out = ["req/s, this tree vs @base (change of the medians; per round, this / @base):"]
    for c in comparison:
        name = c["row"].ljust(width)
        if c["status"] == "unsupported":
            out.append(f"  {name}  no baseline: the baseline cannot run this row")
        elif c["change"] is None:
            out.append(f"  {name}  not compared: {c['status']}")
        else:
            out.append(
                f"  {name}  {c['requests_per_sec']:>9,.0f} vs {c['base_requests_per_sec']:>9,.0f}"
                f"  {c['change']:+7.1%}  (rounds: {_ratios(c['round_ratios'])})"
                + ("  suspect: other load, see the notes" if c["suspect"] else "")
            )
    floor = baseline_floor(comparison)
    if floor is not None:
        worst = ""
        if floor["worst_row"] is not None:
            worst = f"; worst: {floor['worst_row']} {floor['worst_change']:+.1%}"
        missing = ""
        if floor["not_compared"]:
            missing = f"; not compared: {', '.join(sorted(floor['not_compared']))}"
        out.append(
            f"[{'ok' if floor['ok'] else 'BELOW'}] no row loses more than "
            f"{floor['max_loss']:.0%} of its requests/s{worst}{missing}"
        )
    out.append("64 MiB stream MiB/s, this tree vs @base (reported, no floor):")
    for c in comparison:
        if c["large_change"] is None:
            continue
        out.append(
            f"  {c['row'].ljust(width)}  {c['large_mib_per_sec']:>9,.0f} vs "
            f"{c['base_large_mib_per_sec']:>9,.0f}  {c['large_change']:+7.1%}  "
            f"(rounds: {_ratios(c['large_round_ratios'])})"
        )
    return out


def extra_notes(extras: Sequence[Any], noise: float = 0.05) -> list[str]:
    """The same notes for the extra parts (WebSocket, SSE, relay idle)."""
    out = []
    for e in extras:
        out += _suspect(e.name, e.error, e.other_cpu_cores, noise)
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
    comparison: Sequence[dict[str, Any]] = (),
) -> None:
    doc = {"meta": meta, "rows": list(rows), "extras": extras or {}}
    if meta.get("baseline") is not None:
        doc["vs_baseline"] = {"rows": list(comparison), "floor": baseline_floor(comparison)}
    path.write_text(json.dumps(doc, indent=2) + "\n")
