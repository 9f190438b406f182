"""``kind: ollama`` against a fake Ollama on 127.0.0.1 that sends its native wire bytes
(/api/chat, /api/generate, /api/embed, /api/tags; NDJSON streams): translation both ways,
streaming, errors, faults mid-stream, cancellation."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import entry_points
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from fake_native_servers import FakeAnthropic, FakeOllama
from fake_openai_server import Fault
from gatewayd_llm.exchange import StreamFailed, Usage
from gatewayd_llm.kinds.base import HttpProvider
from gatewayd_llm.kinds.ollama import OllamaUpstream, OllamaUpstreamConfig, StreamTranslator
from llm_kind_harness import (
    CLIENT_HEADERS,
    body_json,
    chat_text,
    content_of,
    exchange,
    make_kind,
    read_events,
    send,
    sse_data,
)

from gatewayd.chain import TimeoutsConfig, UpstreamError, UpstreamTimeout

MODEL = "llama3.2:3b"
KindFactory = Callable[..., Awaitable[HttpProvider]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    server = await FakeOllama(models=(MODEL, "all-minilm")).start()
    yield server
    await server.close()


@pytest.fixture
async def kinds() -> AsyncIterator[KindFactory]:
    made: list[HttpProvider] = []

    async def make(base_url: str, **config: Any) -> HttpProvider:
        kind = await make_kind(OllamaUpstream, base_url=base_url, **config)
        made.append(kind)
        return kind

    yield make
    for kind in made:
        await kind.close()


def chat(**body: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], **body}


def test_the_kind_is_registered_and_needs_no_key() -> None:
    (ep,) = [e for e in entry_points(group="gatewayd.upstreams") if e.name == "ollama"]
    assert ep.load() is OllamaUpstream
    cfg = OllamaUpstreamConfig.model_validate({"kind": "ollama"})
    assert cfg.base_url == "http://127.0.0.1:11434" and cfg.api_key is None


# -- translation, not streamed ----------------------------------------------------------------


async def test_chat_request_is_translated_to_api_chat_and_the_answer_back(
    fake: FakeOllama, kinds: KindFactory
) -> None:
    kind = await kinds(fake.url, keep_alive="10m", options={"num_ctx": 8192})
    body = chat(
        messages=[
            {"role": "developer", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is "},
                    {"type": "text", "text": "this"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                ],
            },
        ],
        max_tokens=4,
        temperature=0.2,
        top_p=0.8,
        seed=7,
        stop=["END", "STOP"],
        response_format={"type": "json_object"},
    )
    ex = exchange("chat", body)
    resp, attempt = await send(kind, ex)
    assert resp.status == 200 and attempt.status == 200
    (seen,) = fake.seen("/api/chat")
    for name, value in CLIENT_HEADERS.items():  # nothing of the client's reaches the provider
        assert seen.headers.get(name) != value
    assert "Authorization" not in seen.headers and "X-Custom" not in seen.headers
    assert seen.headers["X-Request-ID"] == "rid-llm-1"  # the gateway's request id
    assert seen.body == {
        "model": MODEL,
        "keep_alive": "10m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "what is this", "images": ["iVBORw0K"]},
        ],
        "format": "json",
        "options": {
            "num_ctx": 8192,
            "temperature": 0.2,
            "top_p": 0.8,
            "seed": 7,
            "num_predict": 4,
            "stop": ["END", "STOP"],
        },
        "stream": False,  # explicit: Ollama streams unless told not to
    }
    out = body_json(resp)
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    assert out["model"] == MODEL
    (choice,) = out["choices"]
    assert choice["message"] == {"role": "assistant", "content": "t0 t1 t2 t3 ", "refusal": None}
    assert choice["finish_reason"] == "stop"
    assert seen.usage is not None
    p = seen.usage["prompt_tokens"]
    assert out["usage"] == {"prompt_tokens": p, "completion_tokens": 4, "total_tokens": p + 4}
    assert ex.usage == Usage(p, 4) and ex.first_byte_at is not None


async def test_done_reason_length_and_an_explicit_zero_usage(
    fake: FakeOllama, kinds: KindFactory
) -> None:
    fake.done_reason = "length"
    fake.zero_usage = True
    kind = await kinds(fake.url)
    ex = exchange("chat", chat())
    resp, _ = await send(kind, ex)
    out = body_json(resp)
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert ex.usage == Usage(0, 0)  # reported as 0, not "unknown"


async def test_tools_both_ways(fake: FakeOllama, kinds: KindFactory) -> None:
    fake.tool_call = {"name": "get_weather", "arguments": {"city": "Tokyo"}}
    kind = await kinds(fake.url)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    body = chat(
        messages=[
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_9",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_9", "content": "rain"},
        ],
        tools=tools,
    )
    resp, _ = await send(kind, exchange("chat", body))
    sent = fake.requests[-1].body
    assert sent["tools"] == tools
    assert sent["messages"][1:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}],
        },
        {"role": "tool", "content": "rain", "tool_name": "get_weather"},
    ]
    (choice,) = body_json(resp)["choices"]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call-")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Tokyo"}


async def test_an_image_url_that_is_not_inline_is_a_400(
    fake: FakeOllama, kinds: KindFactory
) -> None:
    kind = await kinds(fake.url)
    parts = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]
    resp, _ = await send(
        kind, exchange("chat", chat(messages=[{"role": "user", "content": parts}]))
    )
    assert resp.status == 400 and body_json(resp)["error"]["param"] == "messages"
    assert fake.requests == []


@pytest.mark.parametrize(
    ("operation", "body", "param"),
    [
        ("chat", chat(tools=[{"type": "function", "function": {}}]), "tools"),
        ("chat", chat(messages=[{"role": "assistant", "tool_calls": ["x"]}]), "messages"),
        ("chat", chat(n=3), "n"),
        ("completions", {"model": MODEL, "prompt": ["a", "b"]}, "prompt"),
        ("embeddings", {"model": MODEL, "input": [1, 2, 3]}, "input"),
    ],
)
async def test_a_request_ollama_cannot_take_is_a_400(
    fake: FakeOllama, kinds: KindFactory, operation: str, body: dict[str, Any], param: str
) -> None:
    kind = await kinds(fake.url)
    resp, _ = await send(kind, exchange(operation, body))  # type: ignore[arg-type]
    assert resp.status == 400 and body_json(resp)["error"]["param"] == param
    assert fake.requests == []


async def test_legacy_completion_goes_to_api_generate(fake: FakeOllama, kinds: KindFactory) -> None:
    kind = await kinds(fake.url)
    body = {"model": MODEL, "prompt": "def f(x):", "suffix": "return y", "max_tokens": 2}
    ex = exchange("completions", body)
    resp, _ = await send(kind, ex)
    (seen,) = fake.seen("/api/generate")
    assert seen.body == {
        "model": MODEL,
        "prompt": "def f(x):",
        "suffix": "return y",
        "options": {"num_predict": 2},
        "stream": False,
    }
    out = body_json(resp)
    assert out["object"] == "text_completion"
    assert out["choices"] == [
        {"text": "t0 t1 ", "index": 0, "logprobs": None, "finish_reason": "stop"}
    ]
    assert ex.usage is not None and ex.usage.completion_tokens == 2


@pytest.mark.parametrize("encoding", [None, "float", "base64"])
async def test_embeddings_go_to_api_embed(
    fake: FakeOllama, kinds: KindFactory, encoding: str | None
) -> None:
    kind = await kinds(fake.url)
    body: dict[str, Any] = {"model": "all-minilm", "input": ["one two", "three"], "dimensions": 2}
    if encoding:
        body["encoding_format"] = encoding
    ex = exchange("embeddings", body)
    resp, _ = await send(kind, ex)
    (seen,) = fake.seen("/api/embed")
    assert seen.body == {"model": "all-minilm", "input": ["one two", "three"], "dimensions": 2}
    out = body_json(resp)
    assert out["object"] == "list" and out["model"] == "all-minilm"
    vectors = [item["embedding"] for item in out["data"]]
    if encoding == "base64":  # OpenAI's: little-endian float32, base64 (the SDK's default)
        vectors = [list(struct.unpack("<2f", base64.b64decode(v))) for v in vectors]
    assert vectors == [[0.25, 0.25], [0.5, 0.5]]
    assert [item["index"] for item in out["data"]] == [0, 1]
    assert out["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert ex.usage == Usage(3, 0)
    # One string in, one embedding out.
    resp, _ = await send(kind, exchange("embeddings", {"model": "all-minilm", "input": "x"}))
    assert fake.requests[-1].body["input"] == "x" and len(body_json(resp)["data"]) == 1


# -- errors -------------------------------------------------------------------------------------


async def test_an_unknown_model_is_a_404_model_not_found(
    fake: FakeOllama, kinds: KindFactory
) -> None:
    kind = await kinds(fake.url)
    for operation, body in [
        ("chat", chat(model="nope:1b")),
        ("chat", chat(model="nope:1b", stream=True)),
        ("embeddings", {"model": "nope:1b", "input": "x"}),
    ]:
        resp, attempt = await send(kind, exchange(operation, body))  # type: ignore[arg-type]
        assert resp.status == 404 and attempt.status == 404
        assert body_json(resp)["error"] == {
            "message": 'model "nope:1b" not found, try pulling it first',
            "type": "not_found_error",
            "code": "model_not_found",
            "param": None,
        }


@pytest.mark.parametrize(
    ("status", "kind_"),
    [
        (500, "api_error"),
        (503, "api_error"),
        (400, "invalid_request_error"),
        (429, "rate_limit_error"),
    ],
)
async def test_provider_errors_become_openai_errors(
    fake: FakeOllama, kinds: KindFactory, status: int, kind_: str
) -> None:
    kind = await kinds(fake.url)
    fake.push(Fault(status=status, message="llama runner process has terminated"))
    resp, _ = await send(kind, exchange("chat", chat(stream=True)))
    assert resp.status == status
    err = body_json(resp)["error"]
    assert err["message"] == "llama runner process has terminated" and err["type"] == kind_


async def test_an_api_key_is_sent_as_a_bearer_token(fake: FakeOllama, kinds: KindFactory) -> None:
    fake.api_key = "ollama-proxy-secret"
    kind = await kinds(fake.url)
    resp, _ = await send(kind, exchange("chat", chat()))
    assert resp.status == 401
    kind = await kinds(fake.url, api_key="ollama-proxy-secret")
    resp, _ = await send(kind, exchange("chat", chat()))
    assert resp.status == 200
    assert fake.requests[-1].headers["Authorization"] == "Bearer ollama-proxy-secret"


async def test_a_whole_answer_cut_short_or_late(fake: FakeOllama, kinds: KindFactory) -> None:
    kind = await kinds(fake.url)
    fake.push(Fault(malformed_after=15))  # a whole answer that is not JSON
    with pytest.raises(UpstreamError) as bad:
        await send(kind, exchange("chat", chat()))
    assert bad.value.status == 502 and bad.value.code == "upstream_malformed"
    fake.push(Fault(cut_after=10))
    with pytest.raises(UpstreamError) as cut:
        await send(kind, exchange("chat", chat()))
    assert cut.value.status == 502
    fake.push(Fault(stall_after=10))
    with pytest.raises(UpstreamTimeout):
        await send(kind, exchange("chat", chat()), TimeoutsConfig(read=0.3))


# -- streaming ---------------------------------------------------------------------------------


async def test_ndjson_lines_become_openai_chunks(fake: FakeOllama, kinds: KindFactory) -> None:
    kind = await kinds(fake.url)
    ex = exchange("chat", chat(stream=True, stream_options={"include_usage": True}, max_tokens=3))
    resp, _ = await send(kind, ex)
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
    seen = fake.requests[-1]
    assert seen.body["stream"] is True and "stream_options" not in seen.body
    events = await read_events(resp.body)
    first, *middle, finish, usage, done = events
    assert len({e["id"] for e in events[:-1]}) == 1
    assert first["object"] == "chat.completion.chunk" and first["model"] == MODEL
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert [e["choices"][0]["delta"] for e in middle] == [{"content": f"t{i} "} for i in range(3)]
    assert finish["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert seen.usage is not None
    p = seen.usage["prompt_tokens"]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": p, "completion_tokens": 3, "total_tokens": p + 3}
    assert done == "[DONE]"
    assert ex.usage == Usage(p, 3) and ex.first_byte_at is not None


async def test_streamed_generate_and_tool_calls(fake: FakeOllama, kinds: KindFactory) -> None:
    kind = await kinds(fake.url)
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2, "stream": True}
    resp, _ = await send(kind, exchange("completions", body))
    events = await read_events(resp.body)
    assert fake.requests[-1].path == "/api/generate"
    assert all(e["object"] == "text_completion" for e in events[:-1])
    assert content_of(events) == "t0 t1 " and events[-1] == "[DONE]"
    fake.tool_call = {"name": "f", "arguments": {"a": 1}}
    resp, _ = await send(kind, exchange("chat", chat(stream=True, max_tokens=1)))
    events = await read_events(resp.body)
    deltas = [e["choices"][0] for e in events if isinstance(e, dict) and e["choices"]]
    (call,) = [d["delta"]["tool_calls"][0] for d in deltas if "tool_calls" in d["delta"]]
    assert call["index"] == 0 and call["type"] == "function" and call["function"]["name"] == "f"
    assert json.loads(call["function"]["arguments"]) == {"a": 1}
    assert deltas[-1]["finish_reason"] == "tool_calls"


async def test_lines_split_anywhere_translate_the_same(fake: FakeOllama) -> None:
    """The provider's bytes may arrive cut at any point (TCP): the same chunks come out."""
    body = chat(stream=True, options={"num_predict": 3})
    async with (
        aiohttp.ClientSession() as session,
        session.post(fake.url + "/api/chat", json=body) as r,
    ):
        raw = await r.read()
    assert raw.count(b"\n") == 4

    def translate(size: int) -> list[Any]:
        translator = StreamTranslator(exchange("chat", body), MODEL)
        out: list[bytes] = []
        for i in range(0, len(raw), size):
            out.extend(translator.feed(raw[i : i + size]))
        assert translator.complete
        return [
            e if e == "[DONE]" else {**e, "created": 0, "id": ""} for e in sse_data(b"".join(out))
        ]

    whole = translate(len(raw))
    assert content_of(whole) == "t0 t1 t2 " and whole[-1] == "[DONE]"
    for size in (1, 2, 5, 64):
        assert translate(size) == whole


async def test_each_line_is_passed_on_as_it_arrives(fake: FakeOllama, kinds: KindFactory) -> None:
    fake.gate = asyncio.Event()
    kind = await kinds(fake.url)
    resp, _ = await send(kind, exchange("chat", chat(stream=True, max_tokens=3)))
    body = resp.body
    assert isinstance(body, AsyncIterator)
    got: list[Any] = []
    async with asyncio.timeout(5):
        while content_of(got) != "t0 ":
            got.extend(sse_data(await anext(body)))
    assert fake.requests[-1].chunks_sent == 1
    fake.gate.set()
    rest = await read_events(body)
    assert content_of(got + rest) == "t0 t1 t2 " and rest[-1] == "[DONE]"


@pytest.mark.parametrize(
    ("fault", "failure"),
    [
        (
            Fault(error_after=2, message="an error was encountered while running the model"),
            "provider",
        ),
        (Fault(malformed_after=2), "malformed"),
        (Fault(cut_after=2), "disconnect"),
        (Fault(stall_after=2), "stall"),
    ],
)
async def test_faults_mid_stream(
    fake: FakeOllama, kinds: KindFactory, fault: Fault, failure: str
) -> None:
    kind = await kinds(fake.url)
    fake.push(fault)
    ex = exchange("chat", chat(stream=True, max_tokens=5))
    resp, _ = await send(kind, ex, TimeoutsConfig(read=0.3))
    got: list[Any] = []
    started = time.monotonic()
    with pytest.raises(StreamFailed) as info:
        async for chunk in resp.body:  # type: ignore[union-attr]
            got.extend(sse_data(chunk))
    assert info.value.kind == failure
    assert content_of(got) == "t0 t1 " and "[DONE]" not in got
    if failure == "provider":
        assert info.value.message == "an error was encountered while running the model"
    if failure == "stall":
        assert 0.25 < time.monotonic() - started < 2
    assert ex.usage is None  # Ollama counts only in its last line


async def test_closing_the_stream_reaches_the_provider_at_once(
    fake: FakeOllama, kinds: KindFactory
) -> None:
    kind = await kinds(fake.url)
    fake.push(Fault(chunk_delay=0.05, chunks=1000))
    resp, _ = await send(kind, exchange("chat", chat(stream=True)))
    body = resp.body
    assert isinstance(body, AsyncIterator)
    async with asyncio.timeout(5):
        while fake.requests[-1].chunks_sent < 2:
            await anext(body)
    closed = time.monotonic()
    await body.aclose()  # type: ignore[attr-defined]
    await fake.wait_idle()
    seen = fake.requests[-1]
    assert seen.cancelled_at is not None and seen.cancelled_at - closed < 0.1


async def test_cancelling_a_request_reaches_the_provider_at_once(
    fake: FakeOllama, kinds: KindFactory
) -> None:
    kind = await kinds(fake.url)
    fake.push(Fault(delay=30))  # loading the model, say
    task = asyncio.create_task(send(kind, exchange("embeddings", {"model": MODEL, "input": "x"})))
    await asyncio.sleep(0.3)
    assert len(fake.requests) == 1 and fake.requests[0].cancelled_at is None
    cancelled = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await fake.wait_idle()
    seen = fake.requests[-1]
    assert seen.cancelled_at is not None and seen.cancelled_at - cancelled < 0.1


async def test_the_health_probe_lists_tags(fake: FakeOllama, kinds: KindFactory) -> None:
    kind = await kinds(fake.url)
    resp, attempt = await send(kind, None)
    assert resp.status == 200 and attempt.status == 200
    assert [s.path for s in fake.requests] == ["/api/tags"]


# -- end to end: the daemon, the llm plugin, the official openai SDK ---------------------------


async def test_through_the_gateway_with_the_openai_sdk(
    fake: FakeOllama, llm_config: Any, llm_gateway: Any
) -> None:
    cfg = llm_config(
        {"ollama": {"kind": "ollama", "base_url": fake.url}},
        {
            "models": {
                "local": [{"upstream": "ollama", "model": MODEL, "context_window": 8192}],
                "embed": [{"upstream": "ollama", "model": "all-minilm"}],
            }
        },
    )
    gw = await llm_gateway(cfg)
    client = gw.client()
    chat = await client.chat.completions.create(
        model="local", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    seen = fake.requests[-1]
    assert seen.path == "/api/chat" and seen.body["options"]["num_predict"] == 3
    assert "Authorization" not in seen.headers  # the client's gateway key stays with us
    assert chat.choices[0].message.content == "t0 t1 t2 "
    assert seen.usage is not None and chat.usage is not None
    assert chat.usage.prompt_tokens == seen.usage["prompt_tokens"]

    stream = await client.chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": "hello there"}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "t0 t1 t2 t3 "
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4

    # The SDK asks for base64 embeddings by default and decodes them.
    emb = await client.embeddings.create(model="embed", input=["one two", "three"])
    assert [d.embedding for d in emb.data] == [[0.25] * 3, [0.5] * 3]
    assert emb.usage.prompt_tokens == 3
    assert fake.requests[-1].path == "/api/embed"

    legacy = await client.completions.create(model="local", prompt="def f():", max_tokens=2)
    assert legacy.choices[0].text == "t0 t1 " and fake.requests[-1].path == "/api/generate"

    records = await gw.usage(count=4)
    assert [r.source for r in records] == ["provider"] * 4
    assert [r.completion_tokens for r in records] == [3, 4, 0, 2]
    assert [r.prompt_tokens for r in records] == [s.usage["prompt_tokens"] for s in fake.requests]

    # A client that goes away mid-stream: Ollama sees its connection go at once.
    fake.push(Fault(chunk_delay=0.05, chunks=1000))
    stream = await client.chat.completions.create(
        model="local", messages=[{"role": "user", "content": "x"}], stream=True
    )
    async for c in stream:
        if c.choices and c.choices[0].delta.content:
            break
    closed = time.monotonic()
    await stream.close()
    await fake.wait_idle()
    cancelled_at = fake.requests[-1].cancelled_at
    assert cancelled_at is not None and cancelled_at - closed < 0.1
    (last,) = [r for r in await gw.usage(count=5) if r.cancelled]
    assert last.stream and last.source != "provider"  # Ollama counts only in its last line

    # Ollama says 0 tokens (a cached prompt, say): recorded as 0, not replaced by an estimate.
    fake.zero_usage = True
    stream = await client.chat.completions.create(
        model="local", messages=[{"role": "user", "content": "one two three"}], stream=True
    )
    assert [c async for c in stream]
    zero = (await gw.usage(count=6))[-1]
    assert (zero.source, zero.prompt_tokens, zero.completion_tokens) == ("provider", 0, 0)

    fake.zero_usage = False
    text_stream = await client.completions.create(
        model="local", prompt="x", max_tokens=3, stream=True
    )
    pieces = [c async for c in text_stream]
    assert "".join(c.choices[0].text for c in pieces if c.choices) == "t0 t1 t2 "
    assert all(c.usage is None for c in pieces)  # not asked for: stripped

    await client.close()


async def test_answers_of_an_unexpected_shape_are_malformed(kinds: KindFactory) -> None:
    """Whatever the provider sends is data: a shape that does not fit is ``malformed``."""
    bad_call = {"model": MODEL, "message": {"role": "assistant", "tool_calls": ["x"]}}

    async def chat_handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body["stream"]:
            return web.json_response({**bad_call, "done": True})
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        await resp.write(
            json.dumps({"model": MODEL, "message": {"content": "hi"}}).encode() + b"\n"
        )
        await resp.write(json.dumps({**bad_call, "done": False}).encode() + b"\n")
        await asyncio.sleep(5)
        return resp

    app = web.Application()
    app.router.add_post("/api/chat", chat_handler)
    async with TestServer(app, host="127.0.0.1") as server:
        kind = await kinds(str(server.make_url("")).rstrip("/"))
        with pytest.raises(UpstreamError) as info:
            await send(kind, exchange("chat", chat()))
        assert info.value.code == "upstream_malformed"
        resp, _ = await send(kind, exchange("chat", chat(stream=True)))
        got: list[Any] = []
        with pytest.raises(StreamFailed) as failed:
            async for chunk in resp.body:  # type: ignore[union-attr]
                got.extend(sse_data(chunk))
        assert failed.value.kind == "malformed" and content_of(got) == "hi"


BEFORE_FIRST_BYTE = [
    Fault(status=429, message="too many requests"),
    Fault(status=500, message="llama runner process has terminated"),
    Fault(status=503, message="server busy"),
    Fault(delay=3),  # no head within timeouts.total (loading the model, say)
    Fault(stall_after=0),
    Fault(cut_after=0),
    Fault(malformed_after=0),
    Fault(error_after=0, message="an error was encountered while running the model"),
]


async def test_fault_matrix_through_the_gateway(
    fake: FakeOllama, llm_config: Any, llm_gateway: Any
) -> None:
    """Every fault of Ollama's before the first byte, streamed or not, is recovered by the
    fallback model; after it, the stream ends with an error the SDK raises, never cleanly."""
    claude = await FakeAnthropic(models=("claude-haiku",)).start()
    try:
        cfg = llm_config(
            {
                "ollama": {"kind": "ollama", "base_url": fake.url,
                           "timeouts": {"read": "500ms", "total": "2s"}},
                "claude": {"kind": "anthropic", "base_url": claude.url, "api_key": "k"},
            },
            {
                "models": {
                    "local": [{"upstream": "ollama", "model": MODEL}],
                    "cloud": [{"upstream": "claude", "model": "claude-haiku"}],
                },
                "fallbacks": {"local": ["cloud"]},
                "breaker": {"failures": 1000},  # every fault must reach this kind
            },
        )  # fmt: skip
        gw = await llm_gateway(cfg)
        client = gw.client()
        claude.chunks = 2
        served = sent = 0
        for stream in (False, True):
            for fault in BEFORE_FIRST_BYTE:
                fake.push(fault)
                sent += 1
                text = await chat_text(client, "local", stream)
                assert len(fake.seen("/api/chat")) == sent  # the fault was met
                if not stream and fault.error_after is not None:
                    assert text == "t0 t1 ", fault  # no error line in a whole answer
                    continue
                served += 1
                assert text == "t0 t1 " and len(claude.seen("/v1/messages")) == served, (
                    stream,
                    fault,
                )

        for fault in [
            Fault(error_after=2),
            Fault(cut_after=2),
            Fault(stall_after=2),
            Fault(malformed_after=2),
        ]:
            fake.push(fault)
            chunks = await client.chat.completions.create(
                model="local",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=5,
                stream=True,
            )
            text = ""
            with pytest.raises(openai.APIError):
                async for c in chunks:
                    text += (c.choices[0].delta.content or "") if c.choices else ""
            assert text == "t0 t1 ", fault
        assert len(claude.seen("/v1/messages")) == served  # no fallback once bytes were sent
        await client.close()
    finally:
        await claude.close()
