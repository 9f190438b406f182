"""The chain runner (gatewayd.chain.runner): order, local replies, fail-closed, plain and async
phases, the chunk phase. Driven through PluginHarness, which runs these same functions."""

from __future__ import annotations

import inspect
import logging

import pytest
from multidict import CIMultiDict

from gatewayd.chain import Plugin, PluginError, Request, RequestContext, Response, RouteInfo
from gatewayd.chain.builder import Chain
from gatewayd.chain.runner import run_done, run_request, run_response
from gatewayd.testing import PluginFailed, PluginHarness


def recorder(name: str, prio: int, log: list[str], **behaviour: object) -> type[Plugin]:
    """A plugin that records each phase; ``answer``, ``boom_request``, ``boom_response`` and
    ``boom_done`` change what it does."""

    class Recorder(Plugin):
        priority = prio

        async def on_request(self, ctx: RequestContext) -> Response | None:
            log.append(f"req:{name}")
            if behaviour.get("boom_request"):
                raise RuntimeError("secret-token-123")
            if behaviour.get("answer"):
                return ctx.error_response(401, "nope", f"{name} says no")
            return None

        async def on_response(self, ctx: RequestContext, response: Response) -> None:
            log.append(f"resp:{name}")
            if behaviour.get("boom_response"):
                raise RuntimeError("secret-token-456")
            response.headers.add("X-Seen-By", name)

        async def on_done(self, ctx: RequestContext) -> None:
            log.append(f"done:{name}")
            if behaviour.get("boom_done"):
                raise RuntimeError("accounting broke")

    Recorder.name = name
    return Recorder


def chain_of(log: list[str], *specs: tuple[str, int, dict[str, object]]) -> PluginHarness:
    first, *rest = [recorder(n, p, log, **b) for n, p, b in specs]
    return PluginHarness(first, plugins=[(cls, None) for cls in rest])


async def test_request_in_priority_order_response_and_done_in_reverse():
    log: list[str] = []
    h = chain_of(log, ("b", 500, {}), ("a", 900, {}), ("c", 100, {}))
    reply = await h.request()
    assert reply.status == 200 and reply.body == b"ok"
    assert log == [
        "req:a", "req:b", "req:c", "resp:c", "resp:b", "resp:a", "done:c", "done:b", "done:a",
    ]  # fmt: skip
    assert reply.headers.getall("X-Seen-By") == ["c", "b", "a"]


async def test_a_local_reply_stops_the_chain_and_only_the_plugins_that_saw_it_run_later():
    log: list[str] = []
    h = chain_of(log, ("a", 900, {}), ("b", 500, {"answer": True}), ("c", 100, {}))
    reply = await h.request()
    assert reply.status == 401
    assert log == ["req:a", "req:b", "resp:b", "resp:a", "done:b", "done:a"]
    assert h.upstream_requests == []  # the backend never saw it


async def test_a_plugin_that_raises_fails_closed_without_leaking_the_error(caplog):
    log: list[str] = []
    h = chain_of(log, ("a", 900, {}), ("b", 500, {"boom_request": True}), ("c", 100, {}))
    with caplog.at_level(logging.ERROR, "gatewayd.chain"):
        reply = await h.request()
    assert reply.status == 500
    assert b"plugin_error" in reply.body and b"secret-token" not in reply.body
    assert "req:c" not in log and h.upstream_requests == []
    assert [(f.plugin, f.phase) for f in h.failures] == [("b", "on_request")]
    record = next(r for r in caplog.records if getattr(r, "plugin", None) == "b")
    assert record.phase == "on_request" and record.request_id == h.last_context.request_id


async def test_a_plugin_error_answers_with_its_own_status_and_headers():
    class Teapot(Plugin):
        name = "teapot"

        def on_request(self, ctx: RequestContext) -> Response | None:
            raise PluginError(418, "teapot", "short and stout", {"X-Why": "tea"})

    h = PluginHarness(Teapot)
    reply = await h.request()
    assert reply.status == 418 and reply.headers["X-Why"] == "tea"
    assert b'"code":"teapot"' in reply.body
    assert h.failures == []  # an answer, not a failure


async def test_on_response_failure_replaces_the_reply_and_stops_the_response_phases():
    log: list[str] = []
    h = chain_of(log, ("a", 900, {}), ("b", 500, {"boom_response": True}), ("c", 100, {}))
    reply = await h.request()
    assert reply.status == 500 and b"plugin 'b' failed" in reply.body
    assert "resp:a" not in log  # stopped after b
    assert log[-3:] == ["done:c", "done:b", "done:a"]  # on_done always runs
    assert "X-Seen-By" not in reply.headers


async def test_on_done_failure_is_raised_by_the_harness_and_the_others_still_run():
    log: list[str] = []
    h = chain_of(log, ("a", 900, {}), ("b", 500, {"boom_done": True}))
    with pytest.raises(PluginFailed) as err:
        await h.request()
    assert [(f.plugin, f.phase) for f in err.value.failures] == [("b", "on_done")]
    assert "accounting broke" in str(err.value)
    assert log[-2:] == ["done:b", "done:a"]


class Plain(Plugin):
    """Every phase a plain function: the runner must not await them (None is not awaitable)."""

    name = "plain"

    def on_request(self, ctx: RequestContext) -> Response | None:
        ctx.state["plain"] = ["req"]
        return None

    def on_response(self, ctx: RequestContext, response: Response) -> None:
        ctx.state["plain"].append("resp")

    def on_done(self, ctx: RequestContext) -> None:
        ctx.state["plain"].append("done")


async def test_plain_phases_are_called_without_a_coroutine():
    h = PluginHarness(Plain)
    assert [entry[3] for entry in h.chain.request + h.chain.response + h.chain.done] == [
        False,
        False,
        False,
    ]
    reply = await h.request()
    assert reply.status == 200 and h.failures == []
    assert h.last_context.state["plain"] == ["req", "resp", "done"]


async def test_a_plain_on_request_may_finish_in_a_coroutine():
    class SlowPath(Plugin):
        name = "slow_path"

        def on_request(self, ctx: RequestContext):  # type: ignore[no-untyped-def]
            if ctx.request.path == "/fast":
                return None
            return self._slow(ctx)

        async def _slow(self, ctx: RequestContext) -> Response:
            return ctx.error_response(403, "slow", "decided in a coroutine")

    h = PluginHarness(SlowPath)
    assert h.chain.request[0][3] is False
    assert (await h.request("GET", "/fast")).status == 200
    assert (await h.request("GET", "/slow")).status == 403


class Upper(Plugin):
    name = "upper"
    priority = 10

    def on_response_chunk(self, ctx: RequestContext, chunk: bytes) -> bytes:
        ctx.state.setdefault("chunks", []).append(chunk)
        return chunk.upper()


class Exclaim(Plugin):
    name = "exclaim"
    priority = 20

    def on_response_chunk(self, ctx: RequestContext, chunk: bytes) -> bytes:
        return chunk + b"!"


async def test_the_chunk_phase_wraps_a_streamed_body_in_reverse_order():
    async def streamed(ctx: RequestContext) -> Response:
        async def body():
            yield b"ab"
            yield b"cd"

        return Response(200, {}, body())

    # exclaim (20) runs before upper (10) on the request, so upper sees each chunk first
    h = PluginHarness(Exclaim, upstream=streamed, plugins=[(Upper, None)])
    reply = await h.request()
    assert reply.body == b"AB!CD!"
    assert h.last_context.state["chunks"] == [b"ab", b"cd"]


async def test_the_chunk_phase_sees_a_bytes_body_as_one_chunk():
    h = PluginHarness(Upper)
    assert (await h.request()).body == b"OK"


def ctx_for() -> RequestContext:
    req = Request("GET", "/", "", CIMultiDict(), "h", "http", "127.0.0.1", None, None)
    return RequestContext(req, "rid", RouteInfo("r", "u", ""))


async def test_the_chunk_phase_closes_the_source_when_the_reply_is_abandoned():
    closed: list[bool] = []

    async def source():
        try:
            for _ in range(100):
                yield b"x"
        finally:
            closed.append(True)

    chain = Chain.of([("upper", Upper(None, None))])  # type: ignore[arg-type]
    ctx = ctx_for()
    reply = await run_response(chain, ctx, Response(200, {}, source()), 0)
    body = reply.body
    assert not isinstance(body, bytes)
    assert await body.__anext__() == b"X"
    await body.aclose()  # type: ignore[attr-defined]
    assert closed == [True]


async def test_the_runner_functions_directly():
    log: list[str] = []
    cls = recorder("solo", 1, log, answer=True)
    chain = Chain.of([("solo", cls(None, None))])  # type: ignore[arg-type]
    ctx = ctx_for()
    reply, seen = await run_request(chain, ctx)
    assert reply is not None and reply.status == 401 and seen == 0
    reply = await run_response(chain, ctx, reply, seen)
    await run_done(chain, ctx, seen)
    assert log == ["req:solo", "resp:solo", "done:solo"]
    empty = Chain.of([])
    assert await run_request(empty, ctx) == (None, -1)
    await run_done(empty, ctx, -1)


def test_the_daemon_and_the_harness_run_these_functions():
    """Defect 7: the dispatcher ran an inlined copy of the chain loop, the harness this one."""
    import gatewayd.proxy.dispatch as dispatch
    import gatewayd.testing as testing

    for module in (dispatch, testing):
        assert module.run_request is run_request
        assert module.run_response is run_response
        assert module.run_done is run_done
    source = inspect.getsource(dispatch)
    for phase in ("chain.request", "chain.response", "chain.chunk"):
        assert f"in {phase}" not in source, f"the dispatcher loops over {phase} itself"
