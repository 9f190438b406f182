"""The public plugin API. Plugins import from here and nowhere else in gatewayd."""

from gatewayd.chain.api import (
    PRINCIPAL_HEADERS,
    Attempt,
    Body,
    BodyTooLarge,
    EmptyConfig,
    Plugin,
    PluginConfig,
    PluginContext,
    PluginError,
    Principal,
    Request,
    RequestContext,
    Response,
    RouteInfo,
    error_body,
)
from gatewayd.config.units import Duration, Rate, RateValue, Ratio, Size

__all__ = [
    "PRINCIPAL_HEADERS",
    "Attempt",
    "Body",
    "BodyTooLarge",
    "Duration",
    "EmptyConfig",
    "Plugin",
    "PluginConfig",
    "PluginContext",
    "PluginError",
    "Principal",
    "Rate",
    "RateValue",
    "Ratio",
    "Request",
    "RequestContext",
    "Response",
    "RouteInfo",
    "Size",
    "error_body",
]
