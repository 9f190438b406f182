"""(being written) admin routes of the LLM gateway under /_admin/llm."""

from __future__ import annotations

from gatewayd.chain import AdminRoute


def routes() -> list[AdminRoute]:
    return []
