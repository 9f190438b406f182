"""``sees_all_replies``: a plugin whose ``on_response`` also sees the local replies of the
plugins before it (and only its ``on_response``: its other phases keep to what it saw)."""

from __future__ import annotations

from typing import ClassVar

from gatewayd.chain import Plugin, RequestContext, Response
from gatewayd.chain.builder import Chain
from gatewayd.testing import PluginHarness


class Gate(Plugin):
    name = "gate"
    priority = 900

    async def on_request(self, ctx: RequestContext) -> Response | None:
        if ctx.request.path == "/deny":
            return ctx.error_response(401, "denied", "no key")
        return None


def shaper(all_replies: bool, log: list[str]) -> type[Plugin]:
    class Shaper(Plugin):
        name = "shaper"
        priority = 100
        sees_all_replies: ClassVar[bool] = all_replies

        async def on_request(self, ctx: RequestContext) -> Response | None:
            log.append("req")
            return None

        async def on_response(self, ctx: RequestContext, response: Response) -> None:
            log.append(f"resp:{response.status}")
            response.headers["X-Shaped"] = "yes"

        async def on_done(self, ctx: RequestContext) -> None:
            log.append("done")

    return Shaper


async def test_a_plugin_that_sees_all_replies_sees_an_earlier_local_reply() -> None:
    log: list[str] = []
    async with PluginHarness(shaper(True, log), plugins=[(Gate, None)]) as h:
        assert h.chain.all_replies == frozenset({1})
        denied = await h.request("GET", "/deny")
        assert denied.status == 401 and denied.headers["X-Shaped"] == "yes"
        assert log == ["resp:401"]  # not its on_request, nor on_done: it did not see those
        ok = await h.request("GET", "/")
        assert ok.status == 200 and ok.headers["X-Shaped"] == "yes"
        assert log == ["resp:401", "req", "resp:200", "done"]


async def test_by_default_a_local_reply_is_not_seen_by_later_plugins() -> None:
    log: list[str] = []
    async with PluginHarness(shaper(False, log), plugins=[(Gate, None)]) as h:
        assert h.chain.all_replies == frozenset()
        denied = await h.request("GET", "/deny")
        assert denied.status == 401 and "X-Shaped" not in denied.headers and log == []
    assert Chain.of([]).all_replies == frozenset()
