"""``services.stores``: where plugins keep state — in this process, or in Redis (shared)."""

from __future__ import annotations

from typing import Any

from gatewayd.config.schema import StateConfig
from gatewayd.stores.memory import MemoryLimiter
from gatewayd.stores.redis import RedisLimiter, connect


class PluginStores:
    """Factories for plugin state backends. ``backend`` is the configured default
    (``state.backend``); a plugin may ask for the other one explicitly. One Redis client is
    shared by every plugin of the process and made on first use."""

    def __init__(self, state: StateConfig) -> None:
        self.backend = state.backend
        self.redis_url = state.redis_url
        self._redis: Any = None

    def redis(self) -> Any:
        if self._redis is None:
            self._redis = connect(self.redis_url)
        return self._redis

    def memory_limiter(self, max_entries: int) -> MemoryLimiter:
        return MemoryLimiter(max_entries)

    def redis_limiter(self, prefix: str) -> RedisLimiter:
        return RedisLimiter(self.redis(), prefix)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
