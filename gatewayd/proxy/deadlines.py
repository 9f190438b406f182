"""Timeouts for the forwarder without a loop timer per request.

Every proxied request waits on a deadline (the target's headers, each read of a streamed body),
and nearly every one is met. A loop timer per wait costs more than the rest of the bookkeeping
together (an allocation and a heap insertion to start, another heap operation to cancel); here
deadlines are grouped into slots ``SLOT`` seconds wide, with one loop timer per slot that has
members. Starting a deadline is a set insertion and meeting it a set removal; a missed deadline
fires at most ``SLOT`` seconds late, which is far below any timeout worth configuring.

A missed deadline cancels its task, as ``asyncio.timeout`` does, and the waiter turns the
``CancelledError`` into its timeout only when that cancellation was the deadline's alone
(:meth:`Deadline.timed_out`). When something else cancelled the task too (the client went away
as the deadline fired), the ``CancelledError`` goes on: the request is a 499, not a 504, and
whatever it was waiting for is cancelled.
"""

from __future__ import annotations

import asyncio
import math

SLOT = 0.025  # seconds


class Deadline:
    """Cancels its task when it expires unless cancelled first (``expired`` tells)."""

    __slots__ = ("cancelling", "expired", "members", "task")

    def __init__(self, task: asyncio.Task[object] | None, members: set[Deadline]) -> None:
        self.expired = False
        self.task = task
        # The task's pending cancellation requests when the deadline started (as in
        # asyncio.timeout): any more than these after taking back its own is someone else's.
        self.cancelling = task.cancelling() if task is not None else 0
        self.members = members

    def expire(self) -> None:
        self.expired = True
        if self.task is not None:
            self.task.cancel()

    def cancel(self) -> None:
        self.members.discard(self)

    def timed_out(self, exc: BaseException) -> bool:
        """Whether ``exc``, caught while waiting on this deadline, is its expiry and nothing
        else: then the caller raises its timeout instead. Call it once, with the exception
        caught (any exception: an expired deadline's cancellation request is taken back
        whatever became of it).

        False when the deadline has not expired, when ``exc`` is not a ``CancelledError``, and
        when the task was also cancelled by someone else, before or after the expiry: that
        ``CancelledError`` must propagate (re-raise it)."""
        if not self.expired:
            return False
        task = self.task
        left = task.uncancel() if task is not None else 0
        return left <= self.cancelling and isinstance(exc, asyncio.CancelledError)


class Deadlines:
    """The slots of one event loop's deadlines (one instance per upstream)."""

    __slots__ = ("loop", "slots")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.slots: dict[int, set[Deadline]] = {}

    def start(self, seconds: float) -> Deadline:
        """A deadline ``seconds`` from now (rounded up to the slot) for the current task."""
        slot = math.ceil((self.loop.time() + seconds) / SLOT)
        members = self.slots.get(slot)
        if members is None:
            members = self.slots[slot] = set()
            self.loop.call_at(slot * SLOT, self._fire, slot)
        deadline = Deadline(asyncio.current_task(self.loop), members)
        members.add(deadline)
        return deadline

    def _fire(self, slot: int) -> None:
        for deadline in self.slots.pop(slot, ()):
            deadline.expire()
