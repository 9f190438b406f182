"""``gatewayd peer``: expose a local service through the gateway's relay."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from typing import Any

EXIT_REFUSED = 2


def install(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "peer", help="serve a local target through the gateway's relay (reverse tunnel)"
    )
    p.add_argument(
        "--gateway", required=True, help="relay URL, e.g. wss://gw.example.com/_relay/connect"
    )
    p.add_argument("--lease", required=True, help="lease name to register")
    p.add_argument("--target", required=True, help="local target, e.g. http://127.0.0.1:9000")
    p.add_argument(
        "--key",
        default=os.environ.get("GATEWAYD_PEER_KEY"),
        help="API key with a relay:<lease> scope (default: $GATEWAYD_PEER_KEY)",
    )
    p.add_argument(
        "--name",
        default="default",
        help="this peer's name: with the key's id, its identity at the gateway (breaker state "
        "and event statistics survive reconnects); peers that share a key and a name are one "
        "target (default: 'default')",
    )
    p.add_argument("--connections", type=int, default=1, help="parallel WebSockets (default 1)")
    events = p.add_mutually_exclusive_group()
    events.add_argument("--events-to", metavar="URL", help="POST each pushed event (JSON) here")
    events.add_argument(
        "--on-event", metavar="CMD", help="run CMD for each event, the event JSON on stdin"
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=cmd_peer)


def _event_handler(args: argparse.Namespace) -> Any:
    if args.events_to:
        import aiohttp

        session: dict[str, aiohttp.ClientSession] = {}

        async def post(event: dict[str, Any]) -> None:
            if "s" not in session:
                session["s"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
            headers = {"X-Gatewayd-Event-Type": str(event.get("type", ""))}
            async with session["s"].post(args.events_to, json=event, headers=headers) as r:
                if r.status >= 400:
                    logging.getLogger("gatewayd.peer").warning(
                        "event receiver refused an event", extra={"status": r.status}
                    )

        return post
    if args.on_event:

        async def run(event: dict[str, Any]) -> None:
            env = {**os.environ, "GATEWAYD_EVENT_TYPE": str(event.get("type", ""))}
            proc = await asyncio.create_subprocess_shell(
                args.on_event, stdin=asyncio.subprocess.PIPE, env=env
            )
            await proc.communicate(json.dumps(event).encode())

        return run
    return None


def cmd_peer(args: argparse.Namespace) -> int:
    from gatewayd.relay.peer import Peer, PeerRefused
    from gatewayd.relay.registry import valid_lease

    if not args.key:
        print("gatewayd peer: --key (or GATEWAYD_PEER_KEY) is required", file=sys.stderr)
        return 1
    for flag, value in (("--lease", args.lease), ("--name", args.name)):
        if not valid_lease(value):
            print(
                f"gatewayd peer: {flag} must be 1-63 letters, digits, '_', '.', '-' "
                "(starting with a letter or digit)",
                file=sys.stderr,
            )
            return 1
    if not args.gateway.startswith(("ws://", "wss://", "http://", "https://")):
        print("gatewayd peer: --gateway must be a ws:// or wss:// URL", file=sys.stderr)
        return 1
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    async def main() -> int:
        peer = Peer(
            args.gateway,
            args.lease,
            args.key,
            args.target,
            connections=args.connections,
            on_event=_event_handler(args),
            name=args.name,
        )
        loop = asyncio.get_running_loop()
        runner = asyncio.create_task(peer.run())
        stopping: list[asyncio.Task[None]] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: stopping.append(asyncio.create_task(peer.stop())))
        try:
            await runner
        except PeerRefused as exc:
            print(f"gatewayd peer: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        finally:
            for task in stopping:
                with contextlib.suppress(Exception):
                    await task
        return 0

    try:
        import uvloop

        return uvloop.run(main())
    except KeyboardInterrupt:
        return 130
