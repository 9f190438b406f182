"""``kind: anthropic`` (placeholder: being written)."""

from __future__ import annotations

from typing import ClassVar, Literal

from gatewayd_llm.kinds.base import HttpProvider, ProviderConfig


class AnthropicUpstreamConfig(ProviderConfig):
    kind: Literal["anthropic"] = "anthropic"


class AnthropicUpstream(HttpProvider):
    kind: ClassVar[str] = "anthropic"
    Config: ClassVar[type[ProviderConfig]] = AnthropicUpstreamConfig
