"""Request taps: who wants to see each finished request as it happens (the dashboard's live
tail). The dispatcher calls :meth:`RequestTaps.emit` once per request, after the access log,
only while :attr:`RequestTaps.active` is true, so an unused tap costs one attribute read.

A listener is a plain callable ``(ctx, status)``: it must be quick and must not raise (one
that raises is removed and logged); it sees the request's context when the reply is done
(``ctx.route``, ``ctx.request``, ``ctx.principal``, ``ctx.started``, ``ctx.bytes_out``...).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gatewayd.chain.api import RequestContext

log = logging.getLogger("gatewayd.observability")
Listener = Callable[[RequestContext, int], None]


class RequestTaps:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self.active = False

    def add(self, listener: Listener) -> None:
        self._listeners.append(listener)
        self.active = True

    def discard(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)
        self.active = bool(self._listeners)

    def emit(self, ctx: RequestContext, status: int) -> None:
        for listener in list(self._listeners):
            try:
                listener(ctx, status)
            except Exception:
                log.exception("a request tap failed and was removed")
                self.discard(listener)
