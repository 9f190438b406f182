"""``gatewayd llm usage export``: the usage records, one per request, as JSON lines or CSV.

::

    gatewayd llm usage export -c /etc/gatewayd/gatewayd.yaml --from 2026-11-01 --to 2026-12-01 \\
        --format csv --output november.csv

Reads ``<state.dir>/llm/usage.sqlite3`` of the config's ``state.dir`` on a read-only connection
(the daemon may be running: WAL mode), oldest first, a thousand records at a time: the export
is streamed, never loaded whole. ``--from``/``--to`` as the admin API takes them (ISO dates or
datetimes, UTC, ``--to`` exclusive; the last 30 days without them). With ``--output`` the file
appears whole or not at all (written beside it, then renamed). A bad date, a config that does
not load or a missing store: one line on stderr, exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from gatewayd.chain import ConfigError, load_config
from gatewayd_llm.usage import COLUMNS, UsageRecord, store_path
from gatewayd_llm.usage_query import BadParameter, StoreMissing, iso, records, time_range

__all__ = ["FIELDS", "export", "install", "row"]

# A record as exported: its fields (time as ISO 8601 UTC), then total_tokens
FIELDS: tuple[str, ...] = (*COLUMNS, "total_tokens")


def row(rec: UsageRecord) -> dict[str, Any]:
    out = dataclasses.asdict(rec)
    out["time"] = iso(rec.time)
    out["total_tokens"] = rec.total_tokens
    return out


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def export(recs: Iterable[UsageRecord], out: IO[str], fmt: str) -> int:
    """Write ``recs`` to ``out`` as ``jsonl`` or ``csv`` (with a header); how many."""
    n = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(FIELDS)
        for rec in recs:
            doc = row(rec)
            writer.writerow([_csv_value(doc[f]) for f in FIELDS])
            n += 1
    else:
        for rec in recs:
            out.write(json.dumps(row(rec), separators=(",", ":")) + "\n")
            n += 1
    return n


def fail(message: str) -> int:
    print(f"gatewayd llm usage export: {message}", file=sys.stderr)
    return 1


def cmd_export(args: argparse.Namespace) -> int:
    try:
        start, end = time_range(args.start, args.end, time.time())
    except BadParameter as exc:
        return fail(f"--{exc.parameter}: {exc.message}")
    try:
        cfg = load_config(args.config, None)
    except ConfigError as exc:
        print(exc.describe(), file=sys.stderr)
        return 1
    path = store_path(cfg.state.dir)
    try:
        recs = records(path, start, end, tenant=args.tenant)
        first = next(recs, None)  # opens the store: a missing one fails before any output
    except StoreMissing:
        return fail(f"no usage store at {path} (state.dir of {args.config})")
    except sqlite3.Error as exc:  # not a database, unreadable...
        return fail(f"cannot read {path}: {exc}")
    chain: Iterator[UsageRecord] = _prepend(first, recs)
    try:
        if args.output is None:
            n = export(chain, sys.stdout, args.format)
            sys.stdout.flush()
        else:
            n = _to_file(Path(args.output), chain, args.format)
            print(
                f"{n} records ({iso(start)} to {iso(end)}) written to {args.output}",
                file=sys.stderr,
            )
    except BrokenPipeError:  # the reader went away (| head): not an error of ours
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        return fail(f"cannot write {args.output}: {exc.strerror or exc}")
    finally:
        recs.close()
    return 0


def _prepend(first: UsageRecord | None, rest: Iterator[UsageRecord]) -> Iterator[UsageRecord]:
    if first is not None:
        yield first
        yield from rest


def _to_file(path: Path, recs: Iterable[UsageRecord], fmt: str) -> int:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as out:
            n = export(recs, out, fmt)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def install(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    default_config = os.environ.get("GATEWAYD_CONFIG", "/etc/gatewayd/gatewayd.yaml")
    usage = sub.add_parser("usage", help="the usage records")
    usub = usage.add_subparsers(dest="usage_command", required=True, metavar="ACTION")
    p = usub.add_parser("export", help="the records, one per request, as JSON lines or CSV")
    p.add_argument("-c", "--config", default=default_config, help="config file (YAML)")
    p.add_argument("--from", dest="start", default=None, help="ISO date or datetime (UTC)")
    p.add_argument("--to", dest="end", default=None, help="exclusive; default now")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    p.add_argument("--output", "-o", default=None, help="file (default: stdout)")
    p.add_argument("--tenant", default=None, help="only this tenant's records")
    p.set_defaults(func=cmd_export)
