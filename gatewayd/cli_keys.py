"""``gatewayd keys create|list|revoke|rotate``: manage API keys in the configured key store.

They work on the store directly (SQLite under ``state.dir``, or Redis with ``state.backend:
redis``), so they work whether or not the daemon runs; a running daemon picks up a revocation
or rotation within a second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gatewayd.config.errors import ConfigError
from gatewayd.config.loader import default_path, load_config
from gatewayd.config.schema import GatewayConfig
from gatewayd.config.units import parse_duration
from gatewayd.observability.audit import record_command
from gatewayd.stores.keys import KeyRecord, KeyStore, KeyStoreError, open_key_store


def _duration(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _audit(config: GatewayConfig, type_: str, what: dict[str, Any]) -> int:
    return record_command(config.audit, config.state.dir, "keys", type_, what)


def _run(args: argparse.Namespace, action: Callable[[KeyStore], Awaitable[int]]) -> int:
    try:
        config = load_config(args.config, None)
    except ConfigError as exc:
        print(exc.describe(), file=sys.stderr)
        return 1
    args.audit = lambda type_, what: _audit(config, type_, what)

    async def main() -> int:
        store = await open_key_store(config.state)
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except KeyStoreError as exc:
        print(f"gatewayd keys: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gatewayd keys: cannot open the key store: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # e.g. Redis unreachable: one line, no traceback
        print(f"gatewayd keys: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _show(record: KeyRecord, as_json: bool) -> None:
    if as_json:
        print(json.dumps(record.to_json()))
        return
    print(f"id:       {record.key_id}")
    print(f"tenant:   {record.tenant}")
    print(f"scopes:   {' '.join(sorted(record.scopes)) or '-'}")
    print(f"expires:  {_when(record.expires_at)}")


def cmd_create(args: argparse.Namespace) -> int:
    async def action(store: KeyStore) -> int:
        key, record = await store.create(
            args.tenant, frozenset(args.scope), args.description, args.expires, args.id, args.prefix
        )
        if args.json:
            print(json.dumps({"key": key, "record": record.to_json()}))
        else:
            print(key)
            print("(the key is shown once; store it now)", file=sys.stderr)
            _show(record, False)
        return int(args.audit("key.create", {"key_id": record.key_id, "tenant": record.tenant}))

    return _run(args, action)


def cmd_list(args: argparse.Namespace) -> int:
    async def action(store: KeyStore) -> int:
        records = await store.list(args.tenant)
        if args.json:
            print(json.dumps([r.to_json() for r in records]))
            return 0
        print(f"{'ID':<20} {'TENANT':<16} {'STATUS':<8} {'EXPIRES':<20} SCOPES")
        for r in records:
            status = r.to_json()["status"]
            scopes = " ".join(sorted(r.scopes)) or "-"
            print(f"{r.key_id:<20} {r.tenant:<16} {status:<8} {_when(r.expires_at):<20} {scopes}")
        return 0

    return _run(args, action)


def cmd_revoke(args: argparse.Namespace) -> int:
    async def action(store: KeyStore) -> int:
        record = await store.revoke(args.key_id)
        print(f"revoked {record.key_id}")
        return int(args.audit("key.revoke", {"key_id": record.key_id, "tenant": record.tenant}))

    return _run(args, action)


def cmd_rotate(args: argparse.Namespace) -> int:
    async def action(store: KeyStore) -> int:
        key, record = await store.rotate(args.key_id, args.grace)
        if args.json:
            print(json.dumps({"key": key, "record": record.to_json(), "grace": args.grace}))
        else:
            print(key)
            print(
                f"(new key for {record.key_id}; the old one stays valid for {args.grace:g}s)",
                file=sys.stderr,
            )
        what = {"key_id": record.key_id, "tenant": record.tenant, "grace": args.grace}
        return int(args.audit("key.rotate", what))

    return _run(args, action)


def install(sub: Any) -> None:
    default_config = default_path()
    keys = sub.add_parser("keys", help="manage API keys (create, list, revoke, rotate)")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", default=default_config, help="config file (YAML)")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    p = ksub.add_parser("create", help="create a key and print it (once)")
    common(p)
    p.add_argument("--tenant", required=True)
    p.add_argument("--scope", action="append", default=[], help="repeatable, e.g. api:read")
    p.add_argument("--description", default="")
    p.add_argument("--expires", type=_duration, default=None, help="lifetime, e.g. 30d")
    p.add_argument("--id", default=None, help="key id (default: random); letters, digits, '-'")
    p.add_argument("--prefix", default="gwd", help="key prefix (default: gwd)")
    p.set_defaults(func=cmd_create)
    p = ksub.add_parser("list", help="list keys (never secrets)")
    common(p)
    p.add_argument("--tenant", default=None)
    p.set_defaults(func=cmd_list)
    p = ksub.add_parser("revoke", help="revoke a key (takes effect within a second)")
    common(p)
    p.add_argument("key_id")
    p.set_defaults(func=cmd_revoke)
    p = ksub.add_parser("rotate", help="new secret; the old one stays valid for --grace")
    common(p)
    p.add_argument("key_id")
    p.add_argument("--grace", type=_duration, default=3600.0, help="default 1h")
    p.set_defaults(func=cmd_rotate)
