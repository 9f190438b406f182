"""Redis-backed plugin state: one atomic Lua script per rate-limit decision, so several gatewayd
processes share one budget. Time comes from the Redis server (``TIME``), not from each host."""

from __future__ import annotations

import math
from typing import Any

from gatewayd.stores.memory import CLOCK_SLACK, Decision

GCRA_SCRIPT = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval * cost
local diff = new_tat - now
local tolerance = interval * burst
if diff > tolerance + 0.000002 then
  return {0, string.format('%.6f', tat - now), string.format('%.6f', diff - tolerance)}
end
redis.call('SET', KEYS[1], string.format('%.6f', new_tat), 'PX', math.ceil(diff * 1000) + 1000)
return {1, string.format('%.6f', diff), '0'}
"""

WINDOW_SCRIPT = """
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local index = math.floor(now / period)
local key = KEYS[1] .. ':' .. string.format('%d', index)
local used = tonumber(redis.call('GET', key) or '0')
local reset = (index + 1) * period - now
if used + cost > limit then
  return {0, used, string.format('%.6f', reset)}
end
used = redis.call('INCRBY', key, cost)
if used == cost then
  redis.call('PEXPIRE', key, math.ceil(reset * 1000) + 1000)
end
return {1, used, string.format('%.6f', reset)}
"""


class StoreError(Exception):
    """The state backend could not answer (Redis down, timed out)."""


def connect(url: str, timeout: float = 0.5) -> Any:
    try:
        import redis.asyncio as aioredis
    except ImportError as exc:  # pragma: no cover - redis is an optional extra
        raise RuntimeError(
            "state.backend redis needs the 'redis' extra: pip install 'gatewayd[redis]'"
        ) from exc
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=0,
        retry_on_timeout=False,
    )


class RedisLimiter:
    """GCRA and fixed windows in Redis. Keys live under ``prefix`` and expire on their own."""

    is_async = True

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._gcra = client.register_script(GCRA_SCRIPT)
        self._window = client.register_script(WINDOW_SCRIPT)

    async def _run(self, script: Any, key: str, *args: Any) -> list[Any]:
        try:
            return list(await script(keys=[self.prefix + key], args=list(args)))
        except Exception as exc:  # connection refused, timeout, script error: all "no answer"
            raise StoreError(f"redis: {type(exc).__name__}") from exc

    async def gcra(self, key: str, interval: float, burst: int, cost: int = 1) -> Decision:
        ok, a, b = await self._run(self._gcra, key, repr(interval), burst, cost)
        tolerance = interval * burst
        if int(ok):
            diff = float(a)
            remaining = max(0, math.floor((tolerance - diff + CLOCK_SLACK) / interval))
            return Decision(True, burst, remaining, diff, 0.0)
        used = float(a)
        remaining = max(0, math.floor((tolerance - used + CLOCK_SLACK) / interval))
        return Decision(False, burst, remaining, used, float(b))

    async def window(self, key: str, limit: int, period: float, cost: int = 1) -> Decision:
        ok, used, reset = await self._run(self._window, key, limit, repr(period), cost)
        used, reset_s = int(used), float(reset)
        if int(ok):
            return Decision(True, limit, max(0, limit - used), reset_s, 0.0)
        return Decision(False, limit, max(0, limit - used), reset_s, reset_s)
