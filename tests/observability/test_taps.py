"""RequestTaps: listeners see each finished request; one that raises is removed."""

from __future__ import annotations

import logging

import pytest
from multidict import CIMultiDict

from gatewayd.chain import Request, RequestContext, RouteInfo
from gatewayd.observability.taps import RequestTaps


def ctx() -> RequestContext:
    request = Request("GET", "/a", "", CIMultiDict(), "h", "http", "127.0.0.1", None, None)
    return RequestContext(request, "rid", RouteInfo("r", None, ""))


def test_listeners_see_requests_and_active_follows_them() -> None:
    taps = RequestTaps()
    assert not taps.active
    seen: list[tuple[str, int]] = []

    def listener(c: RequestContext, status: int) -> None:
        seen.append((c.request_id, status))

    taps.add(listener)
    assert taps.active
    taps.emit(ctx(), 204)
    assert seen == [("rid", 204)]
    taps.discard(listener)
    assert not taps.active
    taps.emit(ctx(), 500)
    assert seen == [("rid", 204)]


def test_a_listener_that_raises_is_removed_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    taps = RequestTaps()
    calls: list[int] = []

    def broken(c: RequestContext, status: int) -> None:
        raise RuntimeError("boom")

    taps.add(broken)
    taps.add(lambda c, status: calls.append(status))
    with caplog.at_level(logging.ERROR, "gatewayd.observability"):
        taps.emit(ctx(), 200)
        taps.emit(ctx(), 201)
    assert calls == [200, 201] and taps.active
    assert sum("request tap failed" in r.message for r in caplog.records) == 1
