"""``gatewayd llm rekey``: seal every stored provider secret with a new master key;
``gatewayd llm keygen PATH``: a first key file.

::

    gatewayd llm keygen /etc/gatewayd/llm.key          # mode 0600, one fresh key
    gatewayd llm rekey -c /etc/gatewayd/gatewayd.yaml [--key-file /etc/gatewayd/llm.key]

The key file is ``--key-file``, else the ``secrets_key_file`` of the config's ``llm`` plugins
(under systemd with ``LoadCredential=``, give the credential's source file with ``--key-file``:
the copy in ``$CREDENTIALS_DIRECTORY`` is read-only). The store is the catalog of the config's
``state`` (SQLite in ``state.dir`` or Redis). The daemon may run meanwhile
(:mod:`gatewayd_llm.rekey`). Exit 0 when done; 1 with one line on stderr for a user error (no
key file, a bad mode, a value that does not open: its record is named, never its value).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from gatewayd.chain import ConfigError, load_config
from gatewayd_llm.catalog import open_store
from gatewayd_llm.rekey import RekeyError, rekey
from gatewayd_llm.sealing import KeyringError, generate_key_file

__all__ = ["install", "key_file_of"]


def key_file_of(cfg: Any) -> Path | None:
    """The ``secrets_key_file`` the config's ``llm`` plugins name (global chain and routes)."""
    specs = list(cfg.plugins)
    for route in cfg.routes:
        specs.extend(route.plugins)
    for spec in specs:
        if spec.name == "llm" and spec.config.get("secrets_key_file"):
            return Path(str(spec.config["secrets_key_file"]))
    return None


def fail(message: str) -> int:
    print(f"gatewayd llm rekey: {message}", file=sys.stderr)
    return 1


async def run(cfg: Any, path: Path) -> int:
    clients: list[Any] = []

    def redis() -> Any:
        from redis.asyncio import Redis

        clients.append(Redis.from_url(cfg.state.redis_url))
        return clients[-1]

    store = open_store(cfg.state.backend, cfg.state.dir, redis)
    try:
        await store.start()
        result = await rekey(path, store)
    finally:
        await store.close()
        for client in clients:
            await client.aclose()
    dropped = ", ".join(result.dropped) or "none"
    print(
        f"{result.resealed} values sealed with key {result.key_id}; "
        f"keys dropped from {path}: {dropped}"
    )
    return 0


def cmd_rekey(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, None)
    except ConfigError as exc:
        print(exc.describe(), file=sys.stderr)
        return 1
    path = Path(args.key_file) if args.key_file else key_file_of(cfg)
    if path is None:
        return fail(
            f"no key file: {args.config} names no llm secrets_key_file "
            "(give the key file with --key-file)"
        )
    try:
        return asyncio.run(run(cfg, path))
    except (KeyringError, RekeyError) as exc:
        return fail(str(exc))
    except OSError as exc:  # the key file's directory, SQLite's
        return fail(f"{exc.strerror or exc}")
    except Exception as exc:  # the store (redis unreachable, sqlite3 errors): one line
        return fail(f"the catalog store failed: {exc}")


def install(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    default_config = os.environ.get("GATEWAYD_CONFIG", "/etc/gatewayd/gatewayd.yaml")
    p = sub.add_parser("rekey", help="seal every stored provider secret with a new master key")
    p.add_argument("-c", "--config", default=default_config, help="config file (YAML)")
    p.add_argument("--key-file", default=None, help="the key file (default: the config's)")
    p.set_defaults(func=cmd_rekey)
    k = sub.add_parser("keygen", help="a new key file (mode 0600) for provider secrets")
    k.add_argument("path", help="the file to create, e.g. /etc/gatewayd/llm.key")
    k.set_defaults(func=cmd_keygen)


def cmd_keygen(args: argparse.Namespace) -> int:
    try:
        kid = generate_key_file(Path(args.path))
    except KeyringError as exc:
        print(f"gatewayd llm keygen: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gatewayd llm keygen: {args.path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"key {kid} written to {args.path}")
    return 0
