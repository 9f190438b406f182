"""Configuration: schema, loading, validation."""

from gatewayd.config.errors import ConfigError, Problem
from gatewayd.config.loader import load_config, validate_data
from gatewayd.config.schema import GatewayConfig, RouteConfig, UpstreamConfig
from gatewayd.config.units import Duration, Rate, RateValue, Ratio, Size

__all__ = [
    "ConfigError",
    "Duration",
    "GatewayConfig",
    "Problem",
    "Rate",
    "RateValue",
    "Ratio",
    "RouteConfig",
    "Size",
    "UpstreamConfig",
    "load_config",
    "validate_data",
]
