"""A kind's interim (1xx) responses on their way to the client: in the order they came, each
written before the next and all of them before the final reply (``RequestContext.send_interim``
writes them, and bounds them). What a parser hands over as it reads is sync; the writes are not:
each is a task after the one before, and :meth:`InterimRelay.flush` waits for the last."""

from __future__ import annotations

import asyncio

from multidict import CIMultiDict

from gatewayd.chain.api import INTERIM_MAX, RequestContext
from gatewayd.proxy.headers import strip_hop_by_hop


class InterimRelay:
    """The interim responses of one request (make one only when ``ctx.interim_writer`` is
    set: an HTTP/1.1 client)."""

    __slots__ = ("count", "ctx", "pending")

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx
        self.pending: asyncio.Task[None] | None = None
        self.count = 0

    def received(self, status: int, headers: CIMultiDict[str]) -> None:
        """One interim response from the target (sync: called by the parser). Past
        ``INTERIM_MAX`` they are dropped here, before any task is made."""
        if self.count >= INTERIM_MAX or status == 101:
            return
        self.count += 1
        strip_hop_by_hop(headers)
        self.pending = asyncio.get_running_loop().create_task(
            self._send(self.pending, status, headers)
        )

    async def _send(
        self, before: asyncio.Task[None] | None, status: int, headers: CIMultiDict[str]
    ) -> None:
        if before is not None:
            await before
        await self.ctx.send_interim(status, headers)

    async def flush(self) -> None:
        """Wait until every interim response received so far is written."""
        pending = self.pending
        if pending is not None:
            self.pending = None
            await pending

    def cancel(self) -> None:
        """The request failed or was cancelled: what is not written yet never will be."""
        pending = self.pending
        if pending is not None:
            self.pending = None
            pending.cancel()
