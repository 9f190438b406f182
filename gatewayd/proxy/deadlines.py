"""Timeouts for the forwarder without a loop timer per request.

Every proxied request waits on a deadline (the target's headers, each read of a streamed body),
and nearly every one is met. A loop timer per wait costs more than the rest of the bookkeeping
together (an allocation and a heap insertion to start, another heap operation to cancel); here
deadlines are grouped into slots ``SLOT`` seconds wide, with one loop timer per slot that has
members. Starting a deadline is a set insertion and meeting it a set removal; a missed deadline
fires at most ``SLOT`` seconds late, which is far below any timeout worth configuring.
"""

from __future__ import annotations

import asyncio
import math

SLOT = 0.025  # seconds


class Deadline:
    """Cancels its task when it expires unless cancelled first (``expired`` tells)."""

    __slots__ = ("expired", "members", "task")

    def __init__(self, task: asyncio.Task[object] | None, members: set[Deadline]) -> None:
        self.expired = False
        self.task = task
        self.members = members

    def expire(self) -> None:
        self.expired = True
        if self.task is not None:
            self.task.cancel()

    def cancel(self) -> None:
        self.members.discard(self)

    def uncancel(self) -> None:
        """After an expiry was caught: take back the cancellation request it made."""
        if self.task is not None:
            self.task.uncancel()


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
