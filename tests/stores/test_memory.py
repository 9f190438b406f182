"""Budgets of the in-process limiter (gatewayd.stores.memory): reserve all or nothing, adjust
in the window the reservation landed in, windows rolling over, the entry bound."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.stores.memory import MemoryLimiter


def wait_for_next_window(period: float) -> None:
    """Sleep to just after the next epoch-aligned window of ``period`` seconds begins."""
    now = time.time()
    time.sleep((int(now // period) + 1) * period - now + 0.01)


def fresh_window(period: float, margin: float = 0.3) -> None:
    """Make sure at least ``margin`` seconds are left in the current window."""
    now = time.time()
    if (int(now // period) + 1) * period - now < margin:
        wait_for_next_window(period)


def test_reserve_adds_to_every_counter_or_to_none() -> None:
    lim = MemoryLimiter(100)
    fresh_window(60)
    r = lim.reserve([("a", 100, 60, 70), ("b", 10, 60, 1)])
    assert r.allowed and r.used == [70, 1] and r.refused == []
    assert r.windows == [int(time.time() // 60)] * 2
    assert all(0 < s <= 60 for s in r.resets)
    # "a" would go over: nothing is added to "b" either
    r = lim.reserve([("a", 100, 60, 31), ("b", 10, 60, 1)])
    assert not r.allowed and r.refused == [0] and r.used == [70, 1]
    r = lim.reserve([("a", 100, 60, 30), ("b", 10, 60, 1)])
    assert r.allowed and r.used == [100, 2]


def test_reserve_refuses_duplicate_keys_and_bad_items() -> None:
    lim = MemoryLimiter(100)
    with pytest.raises(ValueError):
        lim.reserve([("a", 10, 60, 1), ("a", 20, 60, 1)])
    with pytest.raises(ValueError):
        lim.reserve([("a", 10, 0, 1)])
    with pytest.raises(ValueError):
        lim.reserve([("a", 10, 60, -1)])


def test_adjust_refunds_and_tops_up_never_below_zero() -> None:
    lim = MemoryLimiter(100)
    fresh_window(60)
    r = lim.reserve([("a", 100, 60, 80)])
    lim.adjust([("a", 60, r.windows[0], -50)])  # used 30 of the 80 reserved
    assert lim.reserve([("a", 100, 60, 70)]).used == [100]
    lim.adjust([("a", 60, r.windows[0], -1000)])
    assert lim.reserve([("a", 100, 60, 0)]).used == [0]
    lim.adjust([("a", 60, r.windows[0], 120)])  # a top-up is never refused, even over the limit
    over = lim.reserve([("a", 100, 60, 1)])
    assert not over.allowed and over.used == [120]


def test_adjust_of_a_key_never_reserved_counts_in_the_current_window() -> None:
    lim = MemoryLimiter(100)
    fresh_window(60)
    lim.adjust([("a", 60, -1, 40), ("b", 60, -1, -5)])
    assert lim.reserve([("a", 100, 60, 0), ("b", 100, 60, 0)]).used == [40, 0]


def test_windows_roll_over_and_a_settle_lands_in_its_own_window() -> None:
    lim = MemoryLimiter(100)
    fresh_window(1, 0.5)
    first = lim.reserve([("a", 10, 1, 10)])
    assert first.allowed
    retry = lim.reserve([("a", 10, 1, 1)])
    assert not retry.allowed and 0 < retry.resets[0] <= 1
    wait_for_next_window(1)
    second = lim.reserve([("a", 10, 1, 4)])
    assert second.allowed and second.used == [4]
    assert second.windows[0] == first.windows[0] + 1
    # the first request settles now, in its own (ended) window: the new one is untouched
    lim.adjust([("a", 1, first.windows[0], -10)])
    lim.adjust([("a", 1, first.windows[0], +50)])
    assert lim.reserve([("a", 10, 1, 0)]).used == [4]


def test_entries_are_bounded_least_recently_used_first() -> None:
    lim = MemoryLimiter(10)
    for i in range(1000):
        assert lim.reserve([(f"k{i}", 5, 60, 1)]).allowed
    assert len(lim) == 10 and lim.evictions == 990


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["reserve", "adjust"]),
            st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True),
            st.integers(-50, 120),
        ),
        max_size=60,
    )
)
def test_budgets_hold_under_any_sequence(ops: list[tuple[str, list[str], int]]) -> None:
    """Whatever mix of reservations and corrections: a reservation never takes a counter
    past its limit, a refused one changes nothing, and no counter goes below zero."""
    limits = {"a": 100, "b": 50, "c": 1000}
    lim = MemoryLimiter(100)
    counts = dict.fromkeys(limits, 0)  # the model: what each counter should hold
    fresh_window(3600, 5)
    window = int(time.time() // 3600)
    for op, keys, amount in ops:
        if op == "reserve":
            amount = abs(amount)
            r = lim.reserve([(k, limits[k], 3600, amount) for k in keys])
            fits = all(counts[k] + amount <= limits[k] for k in keys)
            assert r.allowed == fits
            if fits:
                for k in keys:
                    counts[k] += amount
        else:
            lim.adjust([(k, 3600, window, amount) for k in keys])
            for k in keys:
                if counts[k] or amount > 0:
                    counts[k] = max(0, counts[k] + amount)
        now = lim.reserve([(k, 10**9, 3600, 0) for k in limits])
        assert now.used == [counts[k] for k in limits]
        assert all(n >= 0 for n in now.used)
