"""The ``llm`` plugin (being written: the config is the real one)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from gatewayd.chain import Plugin, RequestContext, Response
from gatewayd_llm.config import LlmConfig


class LlmPlugin(Plugin):
    name: ClassVar[str] = "llm"
    Config: ClassVar[type[BaseModel]] = LlmConfig

    async def on_request(self, ctx: RequestContext) -> Response | None:
        return None
