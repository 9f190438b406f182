"""The forwarder's deadlines: slot-grouped timers that cancel the waiting task."""

from __future__ import annotations

import asyncio

import pytest

from gatewayd.proxy.deadlines import SLOT, Deadlines


async def test_a_missed_deadline_cancels_its_task_at_most_a_slot_late() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    started = loop.time()
    deadline = deadlines.start(0.1)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(5)
    assert deadline.expired
    deadline.uncancel()
    assert 0.1 <= loop.time() - started < 0.1 + SLOT + 0.05
    assert not deadlines.slots  # the slot went with its timer


async def test_met_deadlines_never_fire_and_share_one_timer_per_slot() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    fired: list[int] = []

    async def wait(i: int, seconds: float, met: bool) -> None:
        deadline = deadlines.start(seconds)
        try:
            await asyncio.sleep(0.01 if met else 1)
        except asyncio.CancelledError:
            assert deadline.expired
            fired.append(i)
        finally:
            deadline.cancel()

    # 400 waits on 0.2 s deadlines: every other one overstays its deadline.
    tasks = [asyncio.create_task(wait(i, 0.2, met=i % 2 == 0)) for i in range(400)]
    await asyncio.sleep(0)
    assert len(deadlines.slots) <= 2  # one timer per 25 ms slot, not one per request
    await asyncio.gather(*tasks)
    assert sorted(fired) == list(range(1, 400, 2))
