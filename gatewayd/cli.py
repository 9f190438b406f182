"""The ``gatewayd`` command line. User errors print one clear line and exit non-zero."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from gatewayd import __version__
from gatewayd.chain.registry import PluginRegistry
from gatewayd.config.errors import ConfigError
from gatewayd.config.loader import default_path, load_config

DEFAULT_CONFIG = default_path()

# Other modules add subcommands: each installer gets the subparsers object and sets ``func``.
# Plugin distributions add theirs through the entry-point group ``gatewayd.commands``: each entry
# point is such an installer (``llm = gatewayd_llm.cli:install`` gives ``gatewayd llm ...``).
Installer = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]
COMMANDS_GROUP = "gatewayd.commands"


def installers() -> list[Installer]:
    from gatewayd.cli_admin import install as install_admin
    from gatewayd.cli_audit import install as install_audit
    from gatewayd.cli_keys import install as install_keys
    from gatewayd.cli_peer import install as install_peer
    from gatewayd.cli_schema import install as install_schema

    installers = [install_keys, install_peer, install_admin, install_audit, install_schema]
    return [*installers, *distribution_installers()]


def distribution_installers() -> list[Installer]:
    """The installers of the ``gatewayd.commands`` entry points; one that cannot be loaded is
    left out with one line on stderr (the rest of the command line works)."""
    from importlib.metadata import entry_points

    out: list[Installer] = []
    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            install = ep.load()
        except Exception as exc:
            print(f"gatewayd: command {ep.name!r} ({ep.value}) not loaded: {exc}", file=sys.stderr)
            continue
        if callable(install):
            out.append(install)
    return out


def cmd_check(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, PluginRegistry.discover())
    except ConfigError as exc:
        print(exc.describe(), file=sys.stderr)
        return 1
    plugins = len(cfg.plugins) + sum(len(r.plugins) for r in cfg.routes)
    print(
        f"{args.config}: ok ({len(cfg.listen)} listeners, {len(cfg.upstreams)} upstreams, "
        f"{len(cfg.routes)} routes, {plugins} plugins)"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from gatewayd.daemon.pidfile import PidFileError
    from gatewayd.daemon.process import Daemon

    try:
        import uvloop

        runner: Callable[..., object] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency; this is a fallback
        runner = asyncio.run
    daemon = Daemon(args.config)
    try:
        runner(daemon.run())
    except ConfigError as exc:
        print(exc.describe(), file=sys.stderr)
        return 1
    except PidFileError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gatewayd: cannot start: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    from gatewayd.daemon.pidfile import PidFileError, read_pid

    if args.pid_file:
        pid_path = Path(args.pid_file)
    else:
        try:
            pid_path = load_config(args.config, None).pid_file
        except ConfigError as exc:
            print(exc.describe(), file=sys.stderr)
            return 1
    try:
        pid = read_pid(pid_path)
        os.kill(pid, signal.SIGHUP)
    except PidFileError as exc:
        print(f"gatewayd: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gatewayd: cannot signal the daemon: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"sent SIGHUP to gatewayd (pid {pid})")
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    print(f"gatewayd {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatewayd", description="API gateway daemon")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file (YAML)")

    p = sub.add_parser("run", help="run the daemon in the foreground")
    with_config(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("check", help="validate a config file and exit (like nginx -t)")
    with_config(p)
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("reload", help="ask the running daemon to reload (SIGHUP)")
    with_config(p)
    p.add_argument("--pid-file", help="pid file (default: from the config)")
    p.set_defaults(func=cmd_reload)
    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=cmd_version)
    for install in installers():
        install(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
