"""The chain: ordering, phase lists, local replies, fail-closed, hand-over."""

from __future__ import annotations

import asyncio

from multidict import CIMultiDict

from gatewayd.chain import Plugin, PluginError, Request, RequestContext, Response, RouteInfo
from gatewayd.chain.builder import ChainBuilder
from gatewayd.chain.handover import Handover
from gatewayd.chain.registry import PluginRegistry
from gatewayd.chain.runner import run_done, run_request, run_response
from gatewayd.config.schema import PluginSpec


def make(name: str, prio: int, log: list[str], *, answer: bool = False, boom: bool = False):
    class P(Plugin):
        priority = prio

        async def on_request(self, ctx):
            log.append(f"req:{name}")
            if boom:
                raise RuntimeError("secret-token-123 leaked?")
            if answer:
                return ctx.error_response(401, "nope", "no")
            return None

        async def on_done(self, ctx):
            log.append(f"done:{name}")

    P.name = name
    return P


class OnlyResponse(Plugin):
    name = "only_response"
    priority = 1

    async def on_response(self, ctx, response):
        response.headers["X-Only"] = "1"


def ctx() -> RequestContext:
    req = Request("GET", "/", "", CIMultiDict(), "h", "http", "127.0.0.1", None, None)
    return RequestContext(req, "rid", RouteInfo("r", "u", ""))


def build(registry, global_specs, route_specs):
    b = ChainBuilder(registry, None, Handover())
    g = b.instantiate(
        [PluginSpec.model_validate(s) for s in global_specs], "global", "plugins", None, None
    )
    r = b.instantiate(
        [PluginSpec.model_validate(s) for s in route_specs],
        "route:r",
        "routes[0].plugins",
        "r",
        "u",
    )
    return ChainBuilder.order(g, r)


async def test_priority_order_override_and_reverse_done():
    log: list[str] = []
    reg = PluginRegistry()
    for name, prio in (("auth", 1250), ("acl", 950), ("limit", 910), ("late", 10)):
        reg.add(name, make(name, prio, log))
    reg.add("only_response", OnlyResponse)
    chain = build(
        reg,
        [{"limit": {}}],
        [{"acl": {}}, {"auth": {}}, {"late": {}, "priority": 2000}, {"only_response": {}}],
    )
    assert chain.names == ("late", "auth", "acl", "limit", "only_response")
    # Phase lists hold only the plugins that implement the phase.
    assert [n for _, n, _, _ in chain.request] == ["late", "auth", "acl", "limit"]
    assert [n for _, n, _, _ in chain.response] == ["only_response"]
    c = ctx()
    reply, seen = await run_request(chain, c)
    assert reply is None
    resp = await run_response(chain, c, Response(200), seen)
    assert resp.headers["X-Only"] == "1"
    await run_done(chain, c, seen)
    assert log == [
        "req:late",
        "req:auth",
        "req:acl",
        "req:limit",
        "done:limit",
        "done:acl",
        "done:auth",
        "done:late",
    ]


async def test_local_reply_stops_the_chain_and_only_those_that_saw_it_finish():
    log: list[str] = []
    reg = PluginRegistry()
    reg.add("a", make("a", 300, log))
    reg.add("b", make("b", 200, log, answer=True))
    reg.add("c", make("c", 100, log))
    chain = build(reg, [], [{"a": {}}, {"b": {}}, {"c": {}}])
    c = ctx()
    reply, seen = await run_request(chain, c)
    assert reply is not None and reply.status == 401
    await run_done(chain, c, seen)
    assert log == ["req:a", "req:b", "done:b", "done:a"]


async def test_a_plugin_that_raises_fails_closed_without_leaking():
    log: list[str] = []
    reg = PluginRegistry()
    reg.add("boom", make("boom", 100, log, boom=True))
    chain = build(reg, [], [{"boom": {}}])
    reply, _ = await run_request(chain, ctx())
    assert reply is not None and reply.status == 500
    assert b"secret-token-123" not in reply.body
    assert b"plugin 'boom' failed" in reply.body


async def test_plugin_error_gives_its_own_status():
    class Teapot(Plugin):
        name = "teapot"

        async def on_request(self, ctx):
            raise PluginError(418, "teapot", "short and stout", {"X-Why": "tea"})

    reg = PluginRegistry()
    reg.add("teapot", Teapot)
    reply, _ = await run_request(build(reg, [], [{"teapot": {}}]), ctx())
    assert reply.status == 418 and reply.headers["X-Why"] == "tea"


def test_handover_keeps_only_what_is_kept_again():
    old = Handover()
    a = old.keep("x", dict)
    b = old.keep("y", list)
    new = Handover(old)
    assert new.keep("x", dict) is a
    assert old.abandoned_by(new) == [b]


async def test_plain_function_phases_run_without_a_coroutine_and_fail_closed():
    """on_request, on_response and on_done may be plain methods (no coroutine per request);
    they answer, change the response, run in order and fail closed like async ones."""
    log: list[str] = []

    class Sync(Plugin):
        name = "sync"
        priority = 200

        def on_request(self, ctx):
            log.append("req:sync")
            if ctx.request.path == "/deny":
                return ctx.error_response(403, "no", "no")
            if ctx.request.path == "/boom":
                raise RuntimeError("boom")
            if ctx.request.path.startswith("/slow"):
                return self.slow(ctx)  # a coroutine for the slow path: the chain awaits it
            return None

        async def slow(self, ctx):
            await asyncio.sleep(0)
            if ctx.request.path == "/slow-boom":
                raise RuntimeError("slow boom")
            return ctx.error_response(401, "later", "decided later")

        def on_response(self, ctx, response):
            response.headers["X-Sync"] = "1"

        def on_done(self, ctx):
            log.append("done:sync")

    reg = PluginRegistry()
    reg.add("sync", Sync)
    reg.add("late", make("late", 100, log))
    chain = build(reg, [], [{"sync": {}}, {"late": {}}])
    assert [awaited for *_, awaited in chain.request] == [False, True]

    def at(path: str) -> RequestContext:
        req = Request("GET", path, "", CIMultiDict(), "h", "http", "127.0.0.1", None, None)
        return RequestContext(req, "rid", RouteInfo("r", "u", ""))

    c = at("/")
    reply, seen = await run_request(chain, c)
    assert reply is None
    resp = await run_response(chain, c, Response(200), seen)
    assert resp.headers["X-Sync"] == "1"
    await run_done(chain, c, seen)
    assert log == ["req:sync", "req:late", "done:late", "done:sync"]

    denied, seen = await run_request(chain, at("/deny"))
    assert denied is not None and denied.status == 403 and seen == 0
    failed, _ = await run_request(chain, at("/boom"))
    assert failed is not None and failed.status == 500
    later, seen = await run_request(chain, at("/slow"))
    assert later is not None and later.status == 401 and seen == 0
    failed_later, _ = await run_request(chain, at("/slow-boom"))
    assert failed_later is not None and failed_later.status == 500
