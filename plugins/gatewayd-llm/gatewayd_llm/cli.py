"""``gatewayd llm ...``: the LLM gateway's commands (entry point group ``gatewayd.commands``).

(being written) ``gatewayd llm rekey`` and ``gatewayd llm usage export``.
"""

from __future__ import annotations

import argparse


def install(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("llm", help="the LLM gateway: credentials, usage")
    p.add_subparsers(dest="llm_command", required=True, metavar="COMMAND")
