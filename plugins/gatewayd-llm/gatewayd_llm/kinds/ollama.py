"""``kind: ollama`` (placeholder: being written)."""

from __future__ import annotations

from typing import ClassVar, Literal

from gatewayd_llm.kinds.base import HttpProvider, ProviderConfig


class OllamaUpstreamConfig(ProviderConfig):
    kind: Literal["ollama"] = "ollama"


class OllamaUpstream(HttpProvider):
    kind: ClassVar[str] = "ollama"
    Config: ClassVar[type[ProviderConfig]] = OllamaUpstreamConfig
