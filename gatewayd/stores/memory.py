"""In-process state for plugins: rate-limit buckets bounded by an entry count.

Both algorithms use wall-clock seconds (``time.time()``) so that the memory and Redis backends
answer alike: GCRA (a token bucket without a refill task: one float per key, the "theoretical
arrival time") and fixed windows aligned to the epoch (``1000/day`` resets at 00:00 UTC).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass

# Seconds of slack in GCRA's comparisons and counts: a timestamp near today's epoch carries
# about 2.4e-7 s of float error and Redis keeps microseconds, so "now + 0.2 - now" is not 0.2
# and "4 left" would come out as 3.999999 -> 3 (rate 5/s, burst 5).
CLOCK_SLACK = 2e-6


@dataclass(slots=True)
class Decision:
    """The answer for one request against one limit (one per request: not frozen, which would
    cost a third of a microsecond more to build)."""

    allowed: bool
    limit: int  # requests the limit admits at once (burst, or the quota)
    remaining: int  # requests left right now
    reset: float  # seconds until the budget is whole again (the window ends)
    retry_after: float  # seconds until a request would be admitted (0 when allowed)


class MemoryLimiter:
    """GCRA buckets and window counters for one plugin instance, at most ``max_entries`` keys.

    Entries are kept in least-recently-used order; when full, the least recently used key is
    dropped. A dropped key starts again with a full budget, so the bound trades exactness for
    the oldest idle clients against memory: a flood of new keys cannot grow the process.
    """

    __slots__ = ("_entries", "evictions", "max_entries")
    is_async = False

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, float | tuple[int, int]] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _put(self, key: str, value: float | tuple[int, int]) -> None:
        entries = self._entries
        if key in entries:
            entries[key] = value
            entries.move_to_end(key)
            return
        if len(entries) >= self.max_entries:
            entries.popitem(last=False)
            self.evictions += 1
        entries[key] = value

    def gcra(self, key: str, interval: float, burst: int, cost: int = 1) -> Decision:
        """GCRA: admit if the key's theoretical arrival time (TAT), pushed by ``cost``
        intervals, stays within ``burst`` intervals of now; store the new TAT if admitted."""
        now = time.time()
        tat = self._entries.get(key)
        tolerance = interval * burst
        base = tat if tat.__class__ is float and tat > now else now
        new_tat = base + interval * cost
        diff = new_tat - now
        if diff > tolerance + CLOCK_SLACK:
            used = base - now
            left = math.floor((tolerance - used + CLOCK_SLACK) / interval)
            return Decision(False, burst, left if left > 0 else 0, used, diff - tolerance)
        self._put(key, new_tat)
        left = math.floor((tolerance - diff + CLOCK_SLACK) / interval)
        return Decision(True, burst, left if left > 0 else 0, diff, 0.0)

    def window(self, key: str, limit: int, period: float, cost: int = 1) -> Decision:
        now = time.time()
        index = int(now // period)
        reset = (index + 1) * period - now
        entry = self._entries.get(key)
        used = entry[1] if isinstance(entry, tuple) and entry[0] == index else 0
        if used + cost > limit:
            return Decision(False, limit, max(0, limit - used), reset, reset)
        used += cost
        self._put(key, (index, used))
        return Decision(True, limit, limit - used, reset, 0.0)

    def clear(self) -> None:
        self._entries.clear()
