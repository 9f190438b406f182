"""``gatewayd llm ...``: the LLM gateway's commands (entry point group ``gatewayd.commands``):
``gatewayd llm rekey`` (:mod:`gatewayd_llm.cli_rekey`) and ``gatewayd llm usage export``
(:mod:`gatewayd_llm.cli_usage`)."""

from __future__ import annotations

import argparse


def install(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from gatewayd_llm import cli_rekey, cli_usage

    p = sub.add_parser("llm", help="the LLM gateway: provider credentials, usage")
    llm = p.add_subparsers(dest="llm_command", required=True, metavar="COMMAND")
    cli_rekey.install(llm)
    cli_usage.install(llm)
