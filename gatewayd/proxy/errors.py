"""Upstream failures and the status each maps to (defined in the public API, gatewayd.chain)."""

from gatewayd.chain.upstream import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__all__ = ["UpstreamConnectError", "UpstreamError", "UpstreamTimeout", "UpstreamUnavailable"]
