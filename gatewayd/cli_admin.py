"""``gatewayd admin token create|list|revoke``: admin API tokens.

``create`` makes a token, prints it once and either the line to paste under ``admin.tokens``
(bcrypt hash, never the token) or, with ``--store``, keeps the hash in
``<state.dir>/admin_tokens.json``, which the running daemon reads on the next admin call. ``list``
shows the configured and stored tokens (ids and roles, never hashes); ``revoke`` deletes a
stored one (a configured one is removed from the config file, then reloaded).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from gatewayd.admin.tokens import (
    TokenFileError,
    add_token,
    check_id,
    hash_token,
    new_token,
    read_tokens,
    remove_token,
    token_path,
)
from gatewayd.config.errors import ConfigError
from gatewayd.config.loader import default_path, load_config
from gatewayd.config.schema import GatewayConfig
from gatewayd.observability.audit import record_command


def _config(args: argparse.Namespace) -> GatewayConfig | None:
    try:
        return load_config(args.config, None)
    except ConfigError as exc:
        print(exc.describe(), file=sys.stderr)
        return None


def _audit(config: GatewayConfig, type_: str, what: dict[str, Any]) -> int:
    return record_command(config.audit, config.state.dir, "admin", type_, what)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def cmd_create(args: argparse.Namespace) -> int:
    try:
        check_id(args.id)
    except TokenFileError as exc:
        print(f"gatewayd admin: {exc}", file=sys.stderr)
        return 2
    config: GatewayConfig | None = None
    if args.store or Path(args.config).exists():
        config = _config(args)
        if config is None:
            return 1
    if config is not None and any(t.id == args.id for t in config.admin.tokens):
        print(
            f"gatewayd admin: admin.tokens in {args.config} has id {args.id!r} already; "
            "choose another id",
            file=sys.stderr,
        )
        return 1
    path = token_path(config.state.dir) if config is not None else None
    try:
        stored = read_tokens(path) if path is not None else []
    except TokenFileError as exc:
        print(f"gatewayd admin: {exc}", file=sys.stderr)
        return 1
    if any(t.id == args.id for t in stored):
        print(
            f"gatewayd admin: a stored admin token with id {args.id!r} exists already "
            f"({path}); revoke it first or choose another id",
            file=sys.stderr,
        )
        return 1
    token = new_token()
    hashed = hash_token(token, args.rounds)
    if args.store:
        assert path is not None
        try:
            add_token(path, args.id, args.role, hashed)
        except (TokenFileError, OSError) as exc:
            print(f"gatewayd admin: {exc}", file=sys.stderr)
            return 1
    line = f'- {{id: {args.id}, role: {args.role}, hash: "{hashed}"}}'
    audited = 0
    if args.store:
        assert config is not None
        audited = _audit(config, "admin_token.create", {"token_id": args.id, "role": args.role})
    if args.json:
        out: dict[str, Any] = {"id": args.id, "role": args.role, "token": token}
        out.update({"stored": str(path)} if args.store else {"hash": hashed, "config": line})
        print(json.dumps(out))
        return audited
    print(token)
    print("(the token is shown once; keep it now)", file=sys.stderr)
    if args.store:
        print(f"stored as {args.id!r} ({args.role}) in {path}; it works at once")
    else:
        print("paste under admin.tokens in the config, then reload:")
        print(line)
    return audited


def cmd_list(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return 1
    path = token_path(config.state.dir)
    try:
        stored = read_tokens(path)
    except TokenFileError as exc:
        print(f"gatewayd admin: {exc}", file=sys.stderr)
        return 1
    rows: list[dict[str, Any]] = [
        {"id": t.id, "role": t.role, "source": "config", "created": None}
        for t in config.admin.tokens
    ]
    rows += [{"id": t.id, "role": t.role, "source": "stored", "created": t.created} for t in stored]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'ID':<24} {'ROLE':<9} {'SOURCE':<7} CREATED")
    for row in rows:
        created = row["created"]
        when = _when(created) if isinstance(created, float) else "-"
        print(f"{row['id']:<24} {row['role']:<9} {row['source']:<7} {when}")
    if config.admin.jwt is not None:
        print(f"(and JWTs from {config.admin.jwt.expected_issuer}: admin.jwt)")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return 1
    path = token_path(config.state.dir)
    try:
        gone = remove_token(path, args.token_id)
    except TokenFileError as exc:
        if any(t.id == args.token_id for t in config.admin.tokens):
            print(
                f"gatewayd admin: {args.token_id!r} is in admin.tokens of {args.config}: remove "
                "it there and reload",
                file=sys.stderr,
            )
        else:
            print(f"gatewayd admin: {exc}", file=sys.stderr)
        return 1
    print(f"revoked {gone.id} ({gone.role}); the daemon refuses it on the next call")
    return _audit(config, "admin_token.revoke", {"token_id": gone.id, "role": gone.role})


def install(sub: Any) -> None:
    default_config = default_path()
    admin = sub.add_parser("admin", help="admin API access (tokens)")
    asub = admin.add_subparsers(dest="admin_command", required=True, metavar="WHAT")
    token = asub.add_parser("token", help="admin tokens (create, list, revoke)")
    tsub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", default=default_config, help="config file (YAML)")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    p = tsub.add_parser("create", help="create a token and print it (once)")
    common(p)
    p.add_argument("--id", required=True, help="the token's id (in logs and the audit log)")
    p.add_argument("--role", choices=["viewer", "operator"], default="operator")
    p.add_argument(
        "--store", action="store_true", help="keep the hash in <state.dir>/admin_tokens.json"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=12,
        choices=range(4, 16),
        metavar="4..15",
        help="bcrypt cost (default 12)",
    )
    p.set_defaults(func=cmd_create)
    p = tsub.add_parser("list", help="configured and stored admin tokens (never hashes)")
    common(p)
    p.set_defaults(func=cmd_list)
    p = tsub.add_parser("revoke", help="delete a stored admin token (refused on the next call)")
    common(p)
    p.add_argument("token_id")
    p.set_defaults(func=cmd_revoke)
