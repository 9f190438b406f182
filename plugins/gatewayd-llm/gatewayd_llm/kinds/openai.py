"""``kind: openai`` (placeholder: being written)."""

from __future__ import annotations

from typing import ClassVar, Literal

from gatewayd_llm.kinds.base import HttpProvider, ProviderConfig


class OpenAIUpstreamConfig(ProviderConfig):
    kind: Literal["openai"] = "openai"


class OpenAIUpstream(HttpProvider):
    kind: ClassVar[str] = "openai"
    Config: ClassVar[type[ProviderConfig]] = OpenAIUpstreamConfig
