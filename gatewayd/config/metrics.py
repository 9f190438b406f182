"""``metrics:``: what /metrics exports beyond the fixed series (see docs/operations.md)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class MetricsConfig(BaseModel):
    """``top_tenants``: how many tenants (the busiest) get their own series in
    ``gatewayd_tenant_requests_total`` and ``gatewayd_tenant_limited_total``; the others are
    summed as ``tenant="other"``. Read at start (a change needs a restart)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    top_tenants: int = Field(20, ge=0, le=1000)
