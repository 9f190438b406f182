"""The ``llm`` plugin (placeholder: being written)."""

from __future__ import annotations

from typing import ClassVar

from gatewayd.chain import Plugin, RequestContext, Response


class LlmPlugin(Plugin):
    name: ClassVar[str] = "llm"

    async def on_request(self, ctx: RequestContext) -> Response | None:
        return None
