"""(being written) the ``llm_usage`` plugin: a tenant reads its own usage."""

from __future__ import annotations

from typing import ClassVar

from gatewayd.chain import Plugin


class TenantUsagePlugin(Plugin):
    name: ClassVar[str] = "llm_usage"
