"""In-process state for plugins: rate-limit buckets and budgets bounded by an entry count.

All algorithms use wall-clock seconds (``time.time()``) so that the memory and Redis backends
answer alike: GCRA (a token bucket without a refill task: one float per key, the "theoretical
arrival time"), fixed windows aligned to the epoch (``1000/day`` resets at 00:00 UTC), and
budgets: several window counters checked and added together or not at all (``reserve``), then
corrected by the amount really used (``adjust``), as the LLM plugin's token and cost limits do.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Sequence
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


@dataclass(slots=True)
class Reservation:
    """The answer to ``reserve``: either every item was added (``allowed``; ``windows`` says in
    which window each landed, for ``adjust``) or none was (``refused`` lists the items that
    would have gone over their limit)."""

    allowed: bool
    windows: list[int]  # each item's window: its epoch-aligned period number, now // period
    used: list[int]  # each item's count after the reservation (allowed) or now (refused)
    resets: list[float]  # seconds until each item's window ends
    refused: list[int]  # positions of the items over their limit (empty when allowed)


def check_budget(items: Sequence[tuple[str, int, float, int]]) -> None:
    """``reserve``'s items: distinct keys, positive periods, no negative limit or amount."""
    if len({item[0] for item in items}) != len(items):
        raise ValueError("reserve: each key at most once per call")
    for key, limit, period, amount in items:
        if not period > 0 or amount < 0 or limit < 0:
            raise ValueError(f"reserve: bad limit, period or amount for key {key!r}")


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
        while len(entries) >= self.max_entries:
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

    def reserve(self, items: Sequence[tuple[str, int, float, int]]) -> Reservation:
        """Add ``amount`` to the current window of each ``(key, limit, period, amount)`` if
        every one stays within its ``limit``; else add nothing. One synchronous step, so no
        other task sees half of it."""
        check_budget(items)
        now = time.time()
        entries = self._entries
        windows: list[int] = []
        used: list[int] = []
        resets: list[float] = []
        refused: list[int] = []
        for i, (key, limit, period, amount) in enumerate(items):
            index = int(now // period)
            entry = entries.get(key)
            n = entry[1] if isinstance(entry, tuple) and entry[0] == index else 0
            windows.append(index)
            used.append(n)
            resets.append((index + 1) * period - now)
            if n + amount > limit:
                refused.append(i)
        if refused:
            return Reservation(False, windows, used, resets, refused)
        for i, (key, _, _, amount) in enumerate(items):
            used[i] += amount
            self._put(key, (windows[i], used[i]))
        return Reservation(True, windows, used, resets, refused)

    def adjust(self, items: Sequence[tuple[str, float, int, int]]) -> None:
        """Add ``delta`` (a refund when negative) to window ``window`` of each ``(key,
        period, window, delta)``, never refused; a count never goes below 0. A window that
        has ended is left alone; ``window`` -1 means the current one."""
        now = time.time()
        entries = self._entries
        for key, period, window, delta in items:
            current = int(now // period)
            if window < 0:
                window = current
            entry = entries.get(key)
            if isinstance(entry, tuple) and entry[0] == window:
                self._put(key, (window, max(0, entry[1] + delta)))
            elif window == current and delta > 0:  # evicted meanwhile, or never reserved
                self._put(key, (window, delta))

    def clear(self) -> None:
        self._entries.clear()
