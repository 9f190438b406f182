"""The forwarder's deadlines: slot-grouped timers that cancel the waiting task, and a timeout
that never swallows someone else's cancellation (a client that went away)."""

from __future__ import annotations

import asyncio

import pytest

from gatewayd.proxy.deadlines import SLOT, Deadline, Deadlines


async def test_a_missed_deadline_cancels_its_task_at_most_a_slot_late() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    started = loop.time()
    deadline = deadlines.start(0.1)
    with pytest.raises(asyncio.CancelledError) as caught:
        await asyncio.sleep(5)
    assert deadline.expired
    assert deadline.timed_out(caught.value)  # its own cancellation alone: a timeout
    assert asyncio.current_task().cancelling() == 0  # and taken back
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
        except asyncio.CancelledError as exc:
            assert deadline.timed_out(exc)
            fired.append(i)
        finally:
            deadline.cancel()

    # 400 waits on 0.2 s deadlines: every other one overstays its deadline.
    tasks = [asyncio.create_task(wait(i, 0.2, met=i % 2 == 0)) for i in range(400)]
    await asyncio.sleep(0)
    assert len(deadlines.slots) <= 2  # one timer per 25 ms slot, not one per request
    await asyncio.gather(*tasks)
    assert sorted(fired) == list(range(1, 400, 2))


async def waiter(deadlines: Deadlines, outcome: list[str], seconds: float = 5) -> None:
    """What the forwarder does: wait under a deadline; a timeout becomes TimeoutError, any
    other cancellation goes on."""
    deadline = deadlines.start(seconds)
    try:
        await asyncio.sleep(10)
    except BaseException as exc:
        deadline.cancel()
        if deadline.timed_out(exc):
            outcome.append("timeout")
            return
        outcome.append("cancelled")
        raise


def expiry(deadlines: Deadlines) -> Deadline:
    ((deadline,),) = deadlines.slots.values()
    return deadline


@pytest.mark.parametrize("first", ["client", "deadline"])
async def test_a_cancellation_racing_the_expiry_is_not_taken_for_a_timeout(first: str) -> None:
    """The client goes away (its handler task is cancelled) in the same loop iteration as the
    deadline expires, before or after it: the task sees one CancelledError, and it must stay a
    cancellation (a 499 that cancels the upstream request), not become a timeout (504)."""
    deadlines = Deadlines(asyncio.get_running_loop())
    outcome: list[str] = []
    task = asyncio.create_task(waiter(deadlines, outcome))
    await asyncio.sleep(0)  # waiting now
    deadline = expiry(deadlines)
    if first == "client":
        task.cancel()
        deadline.expire()
    else:
        deadline.expire()
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == ["cancelled"]
    assert task.cancelled()


async def test_a_cancellation_racing_the_slot_timer_is_not_taken_for_a_timeout() -> None:
    """The same race with the real timer: the client's cancellation is due at the very moment
    the deadline's slot fires (both run in one loop iteration, in either order)."""
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    for _ in range(5):
        outcome: list[str] = []
        task = asyncio.create_task(waiter(deadlines, outcome, 0.03))
        await asyncio.sleep(0)
        (slot,) = deadlines.slots
        loop.call_at(slot * SLOT, task.cancel)  # the same instant as the slot's own timer
        with pytest.raises(asyncio.CancelledError):
            await task
        assert outcome == ["cancelled"]


async def test_an_expiry_alone_is_a_timeout_and_the_task_can_be_cancelled_later() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    outcome: list[str] = []
    task = asyncio.create_task(waiter(deadlines, outcome))
    await asyncio.sleep(0)
    expiry(deadlines).expire()
    await task  # the timeout was handled: the task finished normally
    assert outcome == ["timeout"]
    assert task.cancelling() == 0


async def test_a_cancellation_pending_before_the_deadline_started_is_not_the_clients() -> None:
    """As asyncio.timeout does: only cancellations requested after the deadline started count
    against it (a task cleaning up after its own cancellation may still time out)."""
    deadlines = Deadlines(asyncio.get_running_loop())
    outcome: list[str] = []

    async def cleanup() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await waiter(deadlines, outcome)  # a wait under a deadline while cancelling
            raise

    task = asyncio.create_task(cleanup())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0)  # in the cleanup now, one cancellation pending
    assert task.cancelling() == 1
    expiry(deadlines).expire()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == ["timeout"]


async def test_an_unexpired_deadline_is_no_timeout_and_leaves_cancellations_alone() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    deadline = deadlines.start(5)
    deadline.cancel()
    assert not deadline.timed_out(asyncio.CancelledError())
    assert not deadline.timed_out(OSError())
    assert asyncio.current_task().cancelling() == 0


async def test_an_expiry_whose_cancellation_became_another_error_is_taken_back() -> None:
    """A callee may turn the CancelledError into an error of its own: not a timeout then, but
    the deadline's cancellation request must not stay pending on the task."""
    deadlines = Deadlines(asyncio.get_running_loop())
    deadline = deadlines.start(0)
    try:
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            raise OSError("connection reset") from None
    except OSError as exc:
        assert not deadline.timed_out(exc)
    assert asyncio.current_task().cancelling() == 0
