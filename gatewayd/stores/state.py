"""``services.stores``: where plugins keep state — in this process, or in Redis (shared)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from gatewayd.config.schema import StateConfig
from gatewayd.stores.memory import MemoryLimiter
from gatewayd.stores.redis import RedisLimiter, connect

T = TypeVar("T")


class PluginStores:
    """Factories for plugin state backends. ``backend`` is the configured default
    (``state.backend``); a plugin may ask for the other one explicitly. One Redis client is
    shared by every plugin of the process and made on first use."""

    def __init__(self, state: StateConfig) -> None:
        self.backend = state.backend
        self.redis_url = state.redis_url
        self._redis: Any = None
        self._named: dict[str, MemoryLimiter] = {}
        self._shared: dict[str, Any] = {}

    def redis(self) -> Any:
        if self._redis is None:
            self._redis = connect(self.redis_url)
        return self._redis

    def memory_limiter(self, max_entries: int, name: str | None = None) -> MemoryLimiter:
        """A new limiter; or, with ``name``, the process's limiter of that name, made on first
        use and the same for every later generation (so its counts outlive any config change,
        as they would in Redis), its bound the latest ``max_entries`` asked for."""
        if name is None:
            return MemoryLimiter(max_entries)
        limiter = self._named.get(name)
        if limiter is None:
            limiter = self._named[name] = MemoryLimiter(max_entries)
        limiter.max_entries = max_entries
        return limiter

    def shared(self, name: str, factory: Callable[[], T]) -> T:
        """The process's object called ``name``, made by ``factory`` on first use and the same
        for every later generation, whatever the config (``context.keep`` hands an object over
        only while the plugin's config is unchanged). For small, bounded state only: it lives
        as long as the process."""
        if name not in self._shared:
            self._shared[name] = factory()
        found: T = self._shared[name]
        return found

    def redis_limiter(self, prefix: str) -> RedisLimiter:
        return RedisLimiter(self.redis(), prefix)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
