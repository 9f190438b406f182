"""Redis-backed plugin state: one atomic Lua script per rate-limit decision (and per budget
reservation over several keys), so several gatewayd processes share one budget. Time comes from
the Redis server (``TIME``), not from each host."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from gatewayd.stores.memory import CLOCK_SLACK, Decision, Reservation, check_budget

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


# Budgets: KEYS are the counters, ARGV (limit, period, amount) per key. Nothing is added unless
# every key stays within its limit; each counter is one window, ``<key>:<window index>``, and
# expires a second after its window ends.
RESERVE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local windows, used, resets, refused = {}, {}, {}, {}
for i = 1, #KEYS do
  local limit = tonumber(ARGV[3 * i - 2])
  local period = tonumber(ARGV[3 * i - 1])
  local amount = tonumber(ARGV[3 * i])
  local index = math.floor(now / period)
  local n = tonumber(redis.call('GET', KEYS[i] .. ':' .. string.format('%d', index)) or '0')
  windows[i] = index
  used[i] = n
  resets[i] = string.format('%.6f', (index + 1) * period - now)
  if n + amount > limit then refused[#refused + 1] = i - 1 end
end
if #refused == 0 then
  for i = 1, #KEYS do
    local amount = tonumber(ARGV[3 * i])
    if amount > 0 then
      local key = KEYS[i] .. ':' .. string.format('%d', windows[i])
      used[i] = redis.call('INCRBY', key, amount)
      if used[i] == amount then
        redis.call('PEXPIRE', key, math.ceil(tonumber(resets[i]) * 1000) + 1000)
      end
    end
  end
end
return {#refused == 0 and 1 or 0, windows, used, resets, refused}
"""

# ARGV (period, window, delta) per key; window -1: the current one. Never refused, never below 0.
ADJUST_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i = 1, #KEYS do
  local period = tonumber(ARGV[3 * i - 2])
  local window = tonumber(ARGV[3 * i - 1])
  local delta = tonumber(ARGV[3 * i])
  local current = math.floor(now / period)
  if window < 0 then window = current end
  local key = KEYS[i] .. ':' .. string.format('%d', window)
  if redis.call('EXISTS', key) == 1 then
    if redis.call('INCRBY', key, delta) < 0 then redis.call('SET', key, 0, 'KEEPTTL') end
  elseif window == current and delta > 0 then
    local ttl = math.ceil(((current + 1) * period - now) * 1000) + 1000
    redis.call('SET', key, delta, 'PX', ttl)
  end
end
return {1}
"""


class StoreError(Exception):
    """The state backend could not answer (Redis down, timed out)."""


def connect(url: str, timeout: float = 0.5, max_connections: int = 16, wait: float = 2.0) -> Any:
    try:
        import redis.asyncio as aioredis
    except ImportError as exc:  # pragma: no cover - redis is an optional extra
        raise RuntimeError(
            "state.backend redis needs the 'redis' extra: pip install 'gatewayd[redis]'"
        ) from exc
    # A blocking pool of a few connections: under a burst of more concurrent decisions than
    # connections, a decision waits (up to ``wait``) for a free connection instead of failing
    # at once, as redis-py's default pool does past its 100 connections; and a burst does not
    # open a hundred connections at once (each costs a handshake: on a busy host, that storm
    # alone ran past the 0.5 s timeout).
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=wait,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=0,
        retry_on_timeout=False,
    )
    return aioredis.Redis.from_pool(pool)


class RedisLimiter:
    """GCRA and fixed windows in Redis. Keys live under ``prefix`` and expire on their own."""

    is_async = True

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._gcra = client.register_script(GCRA_SCRIPT)
        self._window = client.register_script(WINDOW_SCRIPT)
        self._reserve = client.register_script(RESERVE_SCRIPT)
        self._adjust = client.register_script(ADJUST_SCRIPT)

    async def _run(self, script: Any, key: str, *args: Any) -> list[Any]:
        return await self._run_keys(script, [key], list(args))

    async def _run_keys(self, script: Any, keys: list[str], args: list[Any]) -> list[Any]:
        prefix = self.prefix
        try:
            return list(await script(keys=[prefix + k for k in keys], args=args))
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

    async def reserve(self, items: Sequence[tuple[str, int, float, int]]) -> Reservation:
        """:meth:`MemoryLimiter.reserve` in one script: atomic across every gatewayd on this
        Redis."""
        check_budget(items)
        args: list[Any] = []
        for _, limit, period, amount in items:
            args += (limit, repr(float(period)), amount)
        ok, windows, used, resets, refused = await self._run_keys(
            self._reserve, [item[0] for item in items], args
        )
        return Reservation(
            bool(int(ok)),
            [int(w) for w in windows],
            [int(u) for u in used],
            [float(r) for r in resets],
            [int(i) for i in refused],
        )

    async def adjust(self, items: Sequence[tuple[str, float, int, int]]) -> None:
        """:meth:`MemoryLimiter.adjust` in one script."""
        if not items:
            return
        args: list[Any] = []
        for _, period, window, delta in items:
            args += (repr(float(period)), window, delta)
        await self._run_keys(self._adjust, [item[0] for item in items], args)
