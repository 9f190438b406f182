"""``kind: openai`` driven directly, as gatewayd's ManagedUpstream drives a kind (an Exchange in
``ctx.state``, ``send(target, attempt, ctx, path, headers, timeouts)``), against the fake
OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from importlib.metadata import entry_points
from typing import Any

import pytest
from aiohttp import web
from fake_openai_server import FakeOpenAI, Fault
from gatewayd_llm.exchange import EXCHANGE, Exchange, Operation, StreamFailed
from gatewayd_llm.kinds.openai import OpenAIUpstream
from llm_testkit import free_port
from multidict import CIMultiDict

from gatewayd.chain import (
    Attempt,
    Request,
    RequestContext,
    Response,
    RouteInfo,
    TimeoutsConfig,
    UpstreamConnectError,
    UpstreamError,
    UpstreamKind,
)
from gatewayd.testing import upstream_context

CLIENT = {"Authorization": "Bearer gwd_client_key_secret", "Cookie": "s=1", "X-Custom": "c"}
MSGS = [{"role": "user", "content": "hi there"}]


async def kind_for(url: str, **config: Any) -> OpenAIUpstream:
    cfg = OpenAIUpstream.Config.model_validate({"kind": "openai", "base_url": url, **config})
    context = upstream_context("prov")
    kind = OpenAIUpstream("prov", cfg, context)
    await kind.start()
    return kind


@pytest.fixture
async def kinds() -> AsyncIterator[list[OpenAIUpstream]]:
    made: list[OpenAIUpstream] = []
    yield made
    for k in made:
        await k.close()


async def send(
    kind: OpenAIUpstream,
    exchange: Exchange | None,
    timeouts: TimeoutsConfig | None = None,
) -> tuple[Response, Attempt]:
    target = kind.targets()[0]
    attempt = Attempt(target.id)
    request = Request(
        "POST", "/v1/chat/completions", "", CIMultiDict(CLIENT), "gw", "http", "127.0.0.1", b"{}", 2
    )
    ctx = RequestContext(request, "rid-1", RouteInfo("llm", None, "/v1/"))
    if exchange is not None:
        ctx.state[EXCHANGE] = exchange
    reply = await kind.send(
        target, attempt, ctx, "/", CIMultiDict(CLIENT), timeouts or TimeoutsConfig()
    )
    return reply, attempt


def chat(stream: bool = False, operation: Operation = "chat", **body: Any) -> Exchange:
    payload: dict[str, Any] = {"model": "fake-model", "stream": stream, **body}
    if operation == "chat":
        payload.setdefault("messages", MSGS)
    ex = Exchange(operation, payload, "m", "m#0", request_id="rid-1")
    return ex


async def events_of(body: Any) -> list[bytes]:
    return [item async for item in body]


def test_registered_as_the_openai_kind() -> None:
    (ep,) = [e for e in entry_points(group="gatewayd.upstreams") if e.name == "openai"]
    assert ep.load() is OpenAIUpstream
    assert OpenAIUpstream.kind == "openai"
    with pytest.raises(ValueError):
        OpenAIUpstream.Config.model_validate({"kind": "openai", "base_url": "ftp://x"})


async def test_the_request_carries_only_the_providers_headers(
    fake_openai: FakeOpenAI, kinds
) -> None:
    kind = await kind_for(fake_openai.url, api_key="sk-prov", headers={"OpenAI-Project": "p1"})
    kinds.append(kind)
    assert isinstance(kind, UpstreamKind)
    reply, attempt = await send(kind, chat(stream=True, max_tokens=2))
    await events_of(reply.body)
    seen = fake_openai.requests[-1]
    assert seen.headers["Authorization"] == "Bearer sk-prov"
    assert seen.headers["OpenAI-Project"] == "p1" and seen.headers["X-Request-ID"] == "rid-1"
    assert "Cookie" not in seen.headers and "X-Custom" not in seen.headers
    assert "gwd_client_key_secret" not in json.dumps(seen.headers)
    assert seen.body["stream_options"] == {"include_usage": True}  # always asked
    assert seen.body["model"] == "fake-model" and seen.body["messages"] == MSGS
    assert (reply.status, attempt.error) == (200, None)

    quiet = await kind_for(fake_openai.url, stream_usage=False)
    kinds.append(quiet)
    reply, _ = await send(quiet, chat(stream=True, stream_options={"include_usage": True}))
    await events_of(reply.body)
    assert "stream_options" not in fake_openai.requests[-1].body
    assert "Authorization" not in fake_openai.requests[-1].headers  # no api_key: none sent


async def test_a_whole_answer_and_its_usage(fake_openai: FakeOpenAI, kinds) -> None:
    kind = await kind_for(fake_openai.url)
    kinds.append(kind)
    ex = chat(max_tokens=3)
    reply, _ = await send(kind, ex)
    assert reply.status == 200 and reply.headers["Content-Type"] == "application/json"
    assert isinstance(reply.body, bytes)
    assert json.loads(reply.body)["choices"][0]["message"]["content"] == "t0 t1 t2 "
    assert ex.usage is not None and (ex.usage.prompt_tokens, ex.usage.completion_tokens) == (3, 3)
    assert ex.first_byte_at is not None
    emb = chat(operation="embeddings", input="a b")
    reply, _ = await send(kind, emb)
    assert json.loads(reply.body)["data"][0]["object"] == "embedding"  # type: ignore[arg-type]
    assert emb.usage is not None and (emb.usage.prompt_tokens, emb.usage.completion_tokens) == (
        3,
        0,
    )
    fake_openai.push(Fault(usage=False))
    none = chat()
    await send(kind, none)
    assert none.usage is None  # nothing reported: the plugin estimates


async def test_refusals_are_openai_shaped_and_keep_no_secret(make_fake_openai, kinds) -> None:
    fake = await make_fake_openai()
    kind = await kind_for(fake.url, api_key="sk-secret-abc")
    kinds.append(kind)
    fake.push(
        Fault(
            status=429,
            retry_after=7,
            code="rate_limit_exceeded",
            message="slow down, sk-secret-abc",
        )
    )
    reply, _ = await send(kind, chat())
    assert reply.status == 429 and reply.headers["Retry-After"] == "7"
    err = json.loads(reply.body)["error"]  # type: ignore[arg-type]
    assert err["code"] == "rate_limit_exceeded" and err["type"] == "rate_limit_error"
    assert err["message"] == "slow down, ***"
    fake.api_key = "sk-other"
    reply, _ = await send(kind, chat())
    err = json.loads(reply.body)["error"]  # type: ignore[arg-type]
    assert reply.status == 401 and "refused the gateway's credentials" in err["message"]
    assert "sk-" not in json.dumps(err)
    fake.api_key = None
    fake.push(Fault(status=400, code="context_length_exceeded", message="too long"))
    reply, _ = await send(kind, chat())
    assert json.loads(reply.body)["error"]["code"] == "context_length_exceeded"  # type: ignore[arg-type]


async def test_failures_before_an_answer(fake_openai: FakeOpenAI, kinds) -> None:
    kind = await kind_for(fake_openai.url)
    kinds.append(kind)
    fake_openai.push(Fault(malformed_after=5))
    with pytest.raises(UpstreamError) as err:
        await send(kind, chat())
    assert err.value.code == "upstream_malformed"
    fake_openai.push(Fault(cut_after=5))
    with pytest.raises(UpstreamError) as err:
        await send(kind, chat())
    assert err.value.status == 502
    nowhere = await kind_for(f"http://127.0.0.1:{free_port()}/v1")
    kinds.append(nowhere)
    with pytest.raises(UpstreamConnectError):
        await send(nowhere, chat())


async def test_a_stream_is_relayed_event_by_event(fake_openai: FakeOpenAI, kinds) -> None:
    kind = await kind_for(fake_openai.url)
    kinds.append(kind)
    ex = chat(stream=True, max_tokens=3)
    reply, _ = await send(kind, ex)
    assert reply.headers["Content-Type"] == "text/event-stream"
    items = await events_of(reply.body)
    raw = b"".join(items)
    assert all(item.endswith(b"\n\n") and item.startswith(b"data: ") for item in items)
    assert raw.endswith(b"data: [DONE]\n\n")
    events = [e[6:] for e in raw.split(b"\n\n")[:-1]]
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 3
    assert ex.usage is not None and ex.usage.completion_tokens == 3
    assert ex.first_byte_at is not None


@pytest.mark.parametrize(
    ("fault", "kind_of_failure"),
    [
        (Fault(stall_after=2), "stall"),
        (Fault(cut_after=2), "disconnect"),
        (Fault(malformed_after=2), "malformed"),
        (Fault(error_after=2, message="overloaded"), "provider"),
    ],
)
async def test_a_failing_stream_raises_stream_failed(
    fake_openai: FakeOpenAI, kinds, fault: Fault, kind_of_failure: str
) -> None:
    kind = await kind_for(fake_openai.url)
    kinds.append(kind)
    fault.chunk_delay = 0.02
    fake_openai.push(fault)
    reply, _ = await send(kind, chat(stream=True, max_tokens=5), TimeoutsConfig(read=0.3))
    got: list[bytes] = []
    with pytest.raises(StreamFailed) as err:
        async for item in reply.body:  # type: ignore[union-attr]
            got.append(item)
    assert err.value.kind == kind_of_failure
    assert got and b"[DONE]" not in b"".join(got)  # the good events came first
    if kind_of_failure == "provider":
        assert err.value.message == "overloaded"


async def test_a_stream_without_done_has_failed(kinds) -> None:
    """A provider that ends its stream cleanly but early; one that answers a stream request
    with JSON."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n')
        await resp.write_eof()
        return resp

    async def whole(request: web.Request) -> web.Response:
        return web.json_response({"object": "list"})  # 200 JSON to a stream request

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    app.router.add_post("/v2/chat/completions", whole)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        kind = await kind_for(f"http://127.0.0.1:{port}/v1")
        kinds.append(kind)
        reply, _ = await send(kind, chat(stream=True))
        with pytest.raises(StreamFailed) as err:
            await events_of(reply.body)
        assert err.value.kind == "disconnect"
        other = await kind_for(f"http://127.0.0.1:{port}/v2")
        kinds.append(other)
        with pytest.raises(UpstreamError) as upstream_err:
            await send(other, chat(stream=True))
        assert upstream_err.value.code == "upstream_malformed"
    finally:
        await runner.cleanup()


async def test_closing_the_stream_closes_the_providers_request(
    fake_openai: FakeOpenAI, kinds
) -> None:
    kind = await kind_for(fake_openai.url)
    kinds.append(kind)
    fake_openai.push(Fault(stall_after=2))
    reply, _ = await send(kind, chat(stream=True, max_tokens=9))
    body: Any = reply.body
    await body.__anext__()
    left = time.monotonic()
    await body.aclose()
    await fake_openai.wait_idle(1)
    cancelled = fake_openai.requests[-1].cancelled_at
    assert cancelled is not None and cancelled - left < 0.1
    # ... and a cancelled reader too
    fake_openai.push(Fault(stall_after=1))
    reply, _ = await send(kind, chat(stream=True, max_tokens=9))
    body = reply.body
    task = asyncio.ensure_future(events_of(body))
    await asyncio.sleep(0.1)
    left = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await fake_openai.wait_idle(1)
    cancelled = fake_openai.requests[-1].cancelled_at
    assert cancelled is not None and cancelled - left < 0.1


async def test_health_probe_lists_models(make_fake_openai, kinds) -> None:
    fake = await make_fake_openai(api_key="sk-p")
    kind = await kind_for(fake.url, api_key="sk-p")
    kinds.append(kind)
    reply, _ = await send(kind, None)  # no exchange: a health check
    assert reply.status == 200
    assert fake.requests == []  # no completion was asked (the model list is not recorded)
    wrong = await kind_for(fake.url, api_key="sk-wrong")
    kinds.append(wrong)
    assert (await send(wrong, None))[0].status == 401
