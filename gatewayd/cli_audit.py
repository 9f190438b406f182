"""``gatewayd audit verify|export``: check and read the audit log (see docs/audit.md)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gatewayd.config.errors import ConfigError
from gatewayd.config.loader import default_path, load_config
from gatewayd.observability import audit_chain as fmt
from gatewayd.observability.audit_verify import CODES, UNREADABLE, verify


def _directory(args: argparse.Namespace) -> Path | int:
    if args.dir:
        return Path(args.dir)
    try:
        config = load_config(args.config, None)
    except ConfigError as exc:
        print(exc.describe(), file=sys.stderr)
        return UNREADABLE
    return config.audit.directory(config.state.dir)


def cmd_verify(args: argparse.Namespace) -> int:
    directory = _directory(args)
    if isinstance(directory, int):
        return directory
    key = Path(args.public_key) if args.public_key else None
    saved = Path(args.checkpoints) if args.checkpoints else None
    result = verify(directory, key, args.allow_unsigned_tail, saved)
    for warning in result.warnings:
        print(f"gatewayd audit verify: warning: {warning}", file=sys.stderr)
    if result.code == 0:
        print(f"{directory}: {result.message}")
    else:
        meaning = CODES.get(result.code, "")
        print(f"{directory}: {result.message} (exit {result.code}: {meaning})", file=sys.stderr)
    return result.code


def _moment(value: str) -> datetime:
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a time (e.g. 2026-12-01 or 2026-12-01T14:00:00Z)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def records(directory: Path, start: datetime | None, end: datetime | None) -> Iterator[Any]:
    """The records whose time is in [start, end), in order."""
    for _, path in fmt.log_files(directory):
        with path.open("rb") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    when = _moment(rec["time"])
                except (ValueError, KeyError, TypeError, argparse.ArgumentTypeError):
                    continue  # verify reports damage; export reads what can be read
                if (start is None or when >= start) and (end is None or when < end):
                    yield rec


def cmd_export(args: argparse.Namespace) -> int:
    directory = _directory(args)
    if isinstance(directory, int):
        return directory
    if not directory.is_dir():
        print(f"gatewayd audit export: {directory}: no such directory", file=sys.stderr)
        return UNREADABLE
    out = sys.stdout
    writer = None
    if args.format == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["seq", "time", "type", "actor", "source", "what"])
    for rec in records(directory, args.start, args.end):
        if writer is None:
            out.write(json.dumps(rec, separators=(",", ":"), ensure_ascii=False) + "\n")
        else:
            what = json.dumps(rec.get("what"), separators=(",", ":"), ensure_ascii=False)
            row = [rec.get(k) for k in ("seq", "time", "type", "actor", "source")]
            writer.writerow(["" if v is None else v for v in row] + [what])
    return 0


def install(sub: Any) -> None:
    audit = sub.add_parser("audit", help="verify or export the audit log")
    asub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    def where(p: argparse.ArgumentParser) -> None:
        g = p.add_mutually_exclusive_group()
        g.add_argument("-c", "--config", default=default_path(), help="config file (YAML)")
        g.add_argument("--dir", help="the audit directory (default: from the config)")

    p = asub.add_parser(
        "verify",
        help="check the chain and the signed checkpoints (exit codes: docs/audit.md)",
        epilog="exit codes: " + "; ".join(f"{c} {m}" for c, m in CODES.items()),
    )
    where(p)
    p.add_argument(
        "--public-key",
        help="a trusted copy of audit.pub (default: the one beside the log, which proves less)",
    )
    p.add_argument(
        "--checkpoints",
        help="a copy of checkpoints.jsonl kept elsewhere: the current file must start with it",
    )
    p.add_argument(
        "--allow-unsigned-tail",
        action="store_true",
        help="records after the last checkpoint only warn (a running daemon's log)",
    )
    p.set_defaults(func=cmd_verify)
    p = asub.add_parser("export", help="print records in a time range")
    where(p)
    p.add_argument("--from", dest="start", type=_moment, default=None, help="from this time")
    p.add_argument("--to", dest="end", type=_moment, default=None, help="up to this time")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    p.set_defaults(func=cmd_export)
