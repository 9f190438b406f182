"""``cache``: a shared HTTP cache (RFC 9111) for GET and HEAD."""

from gatewayd.plugins.cache.plugin import CacheConfig, CachePlugin

__all__ = ["CacheConfig", "CachePlugin"]
