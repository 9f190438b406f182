"""``kind: process`` (placeholder: being written)."""

from __future__ import annotations

from typing import ClassVar, Literal

from gatewayd_llm.kinds.base import HttpProvider, ProviderConfig


class ProcessUpstreamConfig(ProviderConfig):
    kind: Literal["process"] = "process"


class ProcessUpstream(HttpProvider):
    kind: ClassVar[str] = "process"
    Config: ClassVar[type[ProviderConfig]] = ProcessUpstreamConfig
