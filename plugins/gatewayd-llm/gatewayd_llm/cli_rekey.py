"""(being written)"""

from __future__ import annotations

import argparse


def install(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    return None
