"""``kind: anthropic`` against a fake Messages API on 127.0.0.1 that sends Anthropic's wire
bytes: translation both ways, streaming, errors, faults mid-stream, cancellation."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
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
from gatewayd_llm.kinds.anthropic import (
    AnthropicUpstream,
    AnthropicUpstreamConfig,
    StreamTranslator,
)
from gatewayd_llm.kinds.base import HttpProvider
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

from gatewayd.chain import TimeoutsConfig, UpstreamConnectError, UpstreamError, UpstreamTimeout

SECRET = "sk-ant-test-secret-0123456789"
MODEL = "claude-sonnet-4-5"
KindFactory = Callable[..., Awaitable[HttpProvider]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = await FakeAnthropic(api_key=SECRET, models=(MODEL,)).start()
    yield server
    await server.close()


@pytest.fixture
async def kinds() -> AsyncIterator[KindFactory]:
    made: list[HttpProvider] = []

    async def make(base_url: str, **config: Any) -> HttpProvider:
        config.setdefault("api_key", SECRET)
        kind = await make_kind(AnthropicUpstream, base_url=base_url, **config)
        made.append(kind)
        return kind

    yield make
    for kind in made:
        await kind.close()


def chat(**body: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], **body}


# -- config and discovery ----------------------------------------------------------------------


def test_the_kind_is_registered_and_its_config_has_defaults() -> None:
    (ep,) = [e for e in entry_points(group="gatewayd.upstreams") if e.name == "anthropic"]
    assert ep.load() is AnthropicUpstream
    cfg = AnthropicUpstreamConfig.model_validate(
        {"kind": "anthropic", "base_url": "https://api.anthropic.com/", "api_key": SECRET}
    )
    assert cfg.base_url == "https://api.anthropic.com"
    assert cfg.anthropic_version == "2023-06-01" and cfg.default_max_tokens == 4096
    assert SECRET not in repr(cfg) and SECRET not in str(cfg.model_dump())
    default = AnthropicUpstreamConfig.model_validate({"kind": "anthropic", "api_key": SECRET})
    assert default.base_url == "https://api.anthropic.com"


# -- translation, not streamed ----------------------------------------------------------------


async def test_chat_request_is_translated_to_messages_and_the_answer_back(
    fake: FakeAnthropic, kinds: KindFactory
) -> None:
    fake.chunks = 10
    kind = await kinds(fake.url, default_max_tokens=5)
    body = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "and kind"}]},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": [{"type": "text", "text": "tell me"}]},
        ],
        "temperature": 0.3,
        "top_p": 0.9,
        "stop": "END",
        "user": "u-42",
    }
    ex = exchange("chat", body)
    resp, attempt = await send(kind, ex)
    assert resp.status == 200 and attempt.status == 200
    assert resp.headers["Content-Type"] == "application/json"
    (seen,) = fake.seen("/v1/messages")
    assert seen.headers["x-api-key"] == SECRET
    assert seen.headers["X-Request-ID"] == "rid-llm-1"  # the gateway's request id
    assert seen.headers["anthropic-version"] == "2023-06-01"
    for name, value in CLIENT_HEADERS.items():  # nothing of the client's reaches the provider
        assert seen.headers.get(name) != value
    assert "Cookie" not in seen.headers and "X-Custom" not in seen.headers
    assert seen.body == {
        "model": MODEL,
        "system": "be brief\n\nand kind",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
            {"role": "user", "content": [{"type": "text", "text": "tell me"}]},
        ],
        "max_tokens": 5,  # Anthropic requires it: the config's default
        "temperature": 0.3,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-42"},
    }
    out = body_json(resp)
    assert out["object"] == "chat.completion" and out["id"].startswith("msg_fake")
    assert out["model"] == MODEL
    (choice,) = out["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "t0 t1 t2 t3 t4 "
    assert choice["finish_reason"] == "stop"
    assert seen.usage is not None
    assert out["usage"] == {
        "prompt_tokens": seen.usage["prompt_tokens"],
        "completion_tokens": 5,
        "total_tokens": seen.usage["prompt_tokens"] + 5,
    }
    assert ex.usage == Usage(seen.usage["prompt_tokens"], 5)
    assert ex.first_byte_at is not None


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
    ],
)
async def test_stop_reasons_map_to_finish_reasons(
    fake: FakeAnthropic, kinds: KindFactory, stop_reason: str, finish: str
) -> None:
    fake.stop_reason = stop_reason
    kind = await kinds(fake.url)
    resp, _ = await send(kind, exchange("chat", chat(max_tokens=2)))
    assert body_json(resp)["choices"][0]["finish_reason"] == finish
    assert fake.requests[-1].body["max_tokens"] == 2  # the client's max_tokens wins


async def test_tools_both_ways(fake: FakeAnthropic, kinds: KindFactory) -> None:
    fake.tool_call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    kind = await kinds(fake.url)
    params = {"type": "object", "properties": {"city": {"type": "string"}}}
    body = chat(
        messages=[
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
            {"role": "user", "content": "and Paris?"},
        ],
        tools=[
            {
                "type": "function",
                "function": {"name": "get_weather", "description": "w", "parameters": params},
            }
        ],
        tool_choice="required",
        parallel_tool_calls=False,
    )
    resp, _ = await send(kind, exchange("chat", body))
    sent = fake.requests[-1].body
    assert sent["tools"] == [{"name": "get_weather", "description": "w", "input_schema": params}]
    assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                }
            ],
        },
        {
            "role": "user",  # the tool result and the next user turn: one user message
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "rain"},
                {"type": "text", "text": "and Paris?"},
            ],
        },
    ]
    (choice,) = body_json(resp)["choices"]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["id"] == "toolu_fake01" and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


async def test_image_parts_become_image_blocks(fake: FakeAnthropic, kinds: KindFactory) -> None:
    kind = await kinds(fake.url)
    parts = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    resp, _ = await send(
        kind, exchange("chat", chat(messages=[{"role": "user", "content": parts}]))
    )
    assert resp.status == 200
    assert fake.requests[-1].body["messages"][0]["content"] == [
        {"type": "text", "text": "what is this"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


async def test_legacy_completion_is_one_user_message(
    fake: FakeAnthropic, kinds: KindFactory
) -> None:
    kind = await kinds(fake.url)
    ex = exchange("completions", {"model": MODEL, "prompt": "Say this is a test", "max_tokens": 2})
    resp, _ = await send(kind, ex)
    assert fake.requests[-1].body["messages"] == [{"role": "user", "content": "Say this is a test"}]
    out = body_json(resp)
    assert out["object"] == "text_completion"
    assert out["choices"] == [
        {"text": "t0 t1 ", "index": 0, "logprobs": None, "finish_reason": "stop"}
    ]
    assert out["usage"]["completion_tokens"] == 2 and ex.usage is not None


async def test_embeddings_are_refused_without_calling_the_provider(
    fake: FakeAnthropic, kinds: KindFactory
) -> None:
    kind = await kinds(fake.url)
    resp, _ = await send(kind, exchange("embeddings", {"model": MODEL, "input": "x"}))
    assert resp.status == 400
    err = body_json(resp)["error"]
    assert "not supported by this provider" in err["message"]
    assert err["type"] == "invalid_request_error" and err["code"] == "unsupported_operation"
    assert fake.requests == []


BAD_CALL = {"function": {"name": "f", "arguments": "[1]"}}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"stop": 5}, "stop"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"tools": "get_weather"}, "tools"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c"}]}]}, "messages"),
        ({"messages": [{"role": "assistant", "tool_calls": [BAD_CALL]}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages"),
        ({"messages": []}, "messages"),
    ],
)
async def test_a_request_anthropic_cannot_take_is_a_400(
    fake: FakeAnthropic, kinds: KindFactory, extra: dict[str, Any], param: str
) -> None:
    kind = await kinds(fake.url)
    resp, _ = await send(kind, exchange("chat", chat(**extra)))
    assert resp.status == 400
    err = body_json(resp)["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert fake.requests == []


async def test_an_explicit_zero_usage_is_recorded_as_zero(
    fake: FakeAnthropic, kinds: KindFactory
) -> None:
    fake.zero_usage = True
    kind = await kinds(fake.url)
    ex = exchange("chat", chat())
    resp, _ = await send(kind, ex)
    assert body_json(resp)["usage"] == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
    }
    assert ex.usage == Usage(0, 0)
    ex = exchange("chat", chat(stream=True))
    resp, _ = await send(kind, ex)
    events = await read_events(resp.body)
    assert events[-2]["usage"]["total_tokens"] == 0 and ex.usage == Usage(0, 0)


async def test_cached_prompt_tokens_count_as_prompt_tokens(
    fake: FakeAnthropic, kinds: KindFactory
) -> None:
    fake.cache_tokens = (100, 1000)  # Anthropic's input_tokens leave the cached ones out
    kind = await kinds(fake.url)
    for stream in (False, True):
        ex = exchange("chat", chat(stream=stream, max_tokens=2))
        resp, _ = await send(kind, ex)
        events = await read_events(resp.body) if stream else [body_json(resp), None]
        usage = events[-2]["usage"]
        seen = fake.requests[-1].usage
        assert seen is not None
        prompt = seen["prompt_tokens"] + 1100
        assert usage == {
            "prompt_tokens": prompt,
            "completion_tokens": 2,
            "total_tokens": prompt + 2,
            "prompt_tokens_details": {"cached_tokens": 1000},
        }
        assert ex.usage == Usage(prompt, 2)


async def test_events_split_anywhere_translate_the_same(fake: FakeAnthropic) -> None:
    """The provider's bytes may arrive cut at any point (TCP): the same chunks come out."""
    body = {**chat(stream=True, max_tokens=3), "max_tokens": 3}
    fake.tool_call = {"name": "f", "arguments": {"x": "ü"}}
    async with aiohttp.ClientSession() as session:
        headers = {"x-api-key": SECRET, "anthropic-version": "2023-06-01"}
        async with session.post(fake.url + "/v1/messages", json=body, headers=headers) as r:
            raw = await r.read()
    assert raw.startswith(b"event: message_start\ndata: ")

    def translate(size: int) -> list[Any]:
        translator = StreamTranslator(exchange("chat", body), MODEL)
        out: list[bytes] = []
        for i in range(0, len(raw), size):
            out.extend(translator.feed(raw[i : i + size]))
        assert translator.complete
        return [e if e == "[DONE]" else {**e, "created": 0} for e in sse_data(b"".join(out))]

    whole = translate(len(raw))
    assert content_of(whole) == "t0 t1 t2 " and whole[-1] == "[DONE]"
    for size in (1, 2, 3, 7, 64):
        assert translate(size) == whole


# -- errors before the answer ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "want_status", "want_code", "want_type"),
    [
        (
            429,
            "Number of request tokens has exceeded your rate limit",
            429,
            "rate_limit_exceeded",
            "rate_limit_error",
        ),
        (529, "Overloaded", 503, "overloaded", "api_error"),
        (500, "Internal server error", 500, None, "api_error"),
        (404, "model: claude-nope", 404, "model_not_found", "not_found_error"),
        (403, "Your API key does not have permission", 403, None, "permission_error"),
        (
            400,
            "prompt is too long: 208310 tokens > 200000 maximum",
            400,
            "context_length_exceeded",
            "invalid_request_error",
        ),
        (400, "messages: roles must alternate", 400, None, "invalid_request_error"),
    ],
)
async def test_provider_errors_become_openai_errors(
    fake: FakeAnthropic,
    kinds: KindFactory,
    status: int,
    message: str,
    want_status: int,
    want_code: str | None,
    want_type: str,
) -> None:
    kind = await kinds(fake.url)
    fake.push(Fault(status=status, message=message, retry_after=7 if status == 429 else None))
    for stream in (False, True):
        if stream:
            fake.push(
                Fault(status=status, message=message, retry_after=7 if status == 429 else None)
            )
        resp, attempt = await send(kind, exchange("chat", chat(stream=stream)))
        assert resp.status == want_status and attempt.status == want_status
        assert resp.headers["Content-Type"] == "application/json"
        err = body_json(resp)["error"]
        if status == 403:  # about the gateway's credential, not the client's: our words
            message = "upstream 'prov' refused the gateway's credentials (403)"
        assert err == {"message": message, "type": want_type, "code": want_code, "param": None}
        if status == 429:
            assert resp.headers["Retry-After"] == "7"


async def test_an_error_reply_cut_short_keeps_its_status(
    fake: FakeAnthropic, kinds: KindFactory
) -> None:
    kind = await kinds(fake.url)
    fake.push(Fault(status=429, cut_after=12))
    resp, _ = await send(kind, exchange("chat", chat()))
    assert resp.status == 429
    assert body_json(resp)["error"]["code"] == "rate_limit_exceeded"


async def test_a_stream_answered_as_json_is_malformed(
    fake: FakeAnthropic, kinds: KindFactory
) -> None:
    fake.ignore_stream = True
    kind = await kinds(fake.url)
    with pytest.raises(UpstreamError) as info:
        await send(kind, exchange("chat", chat(stream=True)))
    assert info.value.code == "upstream_malformed"


async def test_a_bad_key_is_a_401_and_the_key_never_shows(
    fake: FakeAnthropic, kinds: KindFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    kind = await kinds(fake.url, api_key="sk-ant-wrong-key-987")
    resp, _ = await send(kind, exchange("chat", chat()))
    assert resp.status == 401
    assert body_json(resp)["error"]["code"] == "invalid_api_key"
    # A provider that echoes the key: it is cut out of the message.
    kind = await kinds(fake.url)
    fake.push(Fault(status=400, message=f"bad request with key {SECRET}"))
    resp, _ = await send(kind, exchange("chat", chat()))
    assert isinstance(resp.body, bytes) and SECRET.encode() not in resp.body
    assert "***" in body_json(resp)["error"]["message"]
    assert SECRET not in caplog.text and "sk-ant-wrong-key-987" not in caplog.text


async def test_connect_failure_and_timeout_are_gatewayd_errors(
    fake: FakeAnthropic, kinds: KindFactory
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kind = await kinds(f"http://127.0.0.1:{port}")
    with pytest.raises(UpstreamConnectError) as info:
        await send(kind, exchange("chat", chat()))
    assert SECRET not in str(info.value)
    # Not streamed: the body did not come within timeouts.read.
    kind = await kinds(fake.url)
    fake.push(Fault(stall_after=1))
    with pytest.raises(UpstreamTimeout):
        await send(kind, exchange("chat", chat()), TimeoutsConfig(read=0.3))
    # Not streamed, cut mid-body: a gatewayd upstream error (502, "disconnect").
    fake.push(Fault(cut_after=10))
    with pytest.raises(UpstreamError) as cut:
        await send(kind, exchange("chat", chat()))
    assert cut.value.status == 502
    # A whole answer that is not a Message: 502, OpenAI-shaped.
    fake.push(Fault(malformed_after=20))  # a whole answer that is not JSON
    with pytest.raises(UpstreamError) as bad:
        await send(kind, exchange("chat", chat()))
    assert bad.value.status == 502 and bad.value.code == "upstream_malformed"


# -- streaming ---------------------------------------------------------------------------------


async def test_stream_events_become_openai_chunks(fake: FakeAnthropic, kinds: KindFactory) -> None:
    kind = await kinds(fake.url)
    ex = exchange("chat", chat(stream=True, stream_options={"include_usage": True}, max_tokens=3))
    resp, _ = await send(kind, ex)
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
    assert fake.requests[-1].body["stream"] is True
    events = await read_events(resp.body)
    seen = fake.requests[-1]
    assert seen.usage is not None
    first, *middle, finish, usage, done = events
    ids = {e["id"] for e in events[:-1]}
    assert ids == {"msg_fake0001"}  # the Message's id
    assert first["object"] == "chat.completion.chunk" and first["model"] == MODEL
    assert first["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": "", "refusal": None},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert [e["choices"][0]["delta"] for e in middle] == [{"content": f"t{i} "} for i in range(3)]
    assert finish["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    ]
    p = seen.usage["prompt_tokens"]
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": p,
        "completion_tokens": 3,
        "total_tokens": p + 3,
    }
    assert done == "[DONE]"
    assert ex.usage == Usage(p, 3) and ex.first_byte_at is not None


async def test_streamed_tool_calls(fake: FakeAnthropic, kinds: KindFactory) -> None:
    fake.tool_call = {"name": "lookup", "arguments": {"q": "gatewayd", "n": 2}}
    kind = await kinds(fake.url)
    resp, _ = await send(kind, exchange("chat", chat(stream=True, max_tokens=1)))
    events = await read_events(resp.body)
    deltas = [e["choices"][0]["delta"] for e in events if isinstance(e, dict) and e["choices"]]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0] == {
        "index": 0,
        "id": "toolu_fake01",
        "type": "function",
        "function": {"arguments": "", "name": "lookup"},
    }
    assert all(
        c == {"index": 0, "function": {"arguments": c["function"]["arguments"]}} for c in calls[1:]
    )
    args = "".join(c["function"]["arguments"] for c in calls)
    assert json.loads(args) == {"q": "gatewayd", "n": 2}
    finishes = [
        e["choices"][0]["finish_reason"] for e in events if isinstance(e, dict) and e["choices"]
    ]
    assert finishes[-1] == "tool_calls"


async def test_streamed_legacy_completion(fake: FakeAnthropic, kinds: KindFactory) -> None:
    kind = await kinds(fake.url)
    resp, _ = await send(
        kind,
        exchange("completions", {"model": MODEL, "prompt": "x", "max_tokens": 2, "stream": True}),
    )
    events = await read_events(resp.body)
    assert events[-1] == "[DONE]" and events[-2]["choices"] == []
    assert all(e["object"] == "text_completion" for e in events[:-1])
    assert content_of(events) == "t0 t1 "
    assert events[-3]["choices"][0]["finish_reason"] == "stop"


async def test_each_event_is_passed_on_as_it_arrives(
    fake: FakeAnthropic, kinds: KindFactory
) -> None:
    fake.gate = asyncio.Event()  # the fake holds everything after its first token until set
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


async def test_an_error_event_mid_stream_fails_the_stream(
    fake: FakeAnthropic, kinds: KindFactory
) -> None:
    kind = await kinds(fake.url)
    fake.push(Fault(error_after=2, message="Overloaded"))
    ex = exchange("chat", chat(stream=True, max_tokens=5))
    resp, _ = await send(kind, ex)
    got: list[Any] = []
    with pytest.raises(StreamFailed) as info:
        async for chunk in resp.body:  # type: ignore[union-attr]
            got.extend(sse_data(chunk))
    assert info.value.kind == "provider" and info.value.message == "Overloaded"
    assert info.value.status == 503
    assert content_of(got) == "t0 t1 " and "[DONE]" not in got
    assert ex.usage is not None and ex.usage.prompt_tokens > 0  # message_start's count


async def test_an_error_right_after_message_start_fails_before_any_byte(
    fake: FakeAnthropic, kinds: KindFactory
) -> None:
    kind = await kinds(fake.url)
    fake.push(Fault(error_after=0, message="Overloaded"))
    resp, _ = await send(kind, exchange("chat", chat(stream=True)))
    assert isinstance(resp.body, AsyncIterator)
    with pytest.raises(StreamFailed) as info:  # the first read: nothing reached the client
        await anext(resp.body)
    assert info.value.kind == "provider" and info.value.status == 503


@pytest.mark.parametrize(
    ("fault", "failure"),
    [
        (Fault(malformed_after=1), "malformed"),
        (Fault(cut_after=1), "disconnect"),
        (Fault(stall_after=1), "stall"),
    ],
)
async def test_faults_mid_stream(
    fake: FakeAnthropic, kinds: KindFactory, fault: Fault, failure: str
) -> None:
    kind = await kinds(fake.url)
    fake.push(fault)
    resp, _ = await send(
        kind, exchange("chat", chat(stream=True, max_tokens=5)), TimeoutsConfig(read=0.3)
    )
    got: list[Any] = []
    started = time.monotonic()
    with pytest.raises(StreamFailed) as info:
        async for chunk in resp.body:  # type: ignore[union-attr]
            got.extend(sse_data(chunk))
    assert info.value.kind == failure
    assert content_of(got) == "t0 " and "[DONE]" not in got
    if failure == "stall":
        assert 0.25 < time.monotonic() - started < 2


async def test_closing_the_stream_reaches_the_provider_at_once(
    fake: FakeAnthropic, kinds: KindFactory
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
    # Closed before a single byte was read: the provider sees it go too.
    fake.push(Fault(chunk_delay=0.05, chunks=1000))
    resp, _ = await send(kind, exchange("chat", chat(stream=True)))
    closed = time.monotonic()
    await resp.body.aclose()  # type: ignore[union-attr]
    await fake.wait_idle()
    seen = fake.requests[-1]
    assert seen.cancelled_at is not None and seen.cancelled_at - closed < 0.1


async def test_cancelling_a_request_reaches_the_provider_at_once(
    fake: FakeAnthropic, kinds: KindFactory
) -> None:
    kind = await kinds(fake.url)
    fake.push(Fault(delay=30))  # the provider thinks for a long time
    task = asyncio.create_task(send(kind, exchange("chat", chat())))
    await asyncio.sleep(0.3)
    assert len(fake.requests) == 1 and fake.requests[0].cancelled_at is None
    cancelled = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await fake.wait_idle()
    seen = fake.requests[-1]
    assert seen.cancelled_at is not None and seen.cancelled_at - cancelled < 0.1


# -- health probe -------------------------------------------------------------------------------


async def test_the_health_probe_lists_models_and_bills_nothing(
    fake: FakeAnthropic, kinds: KindFactory
) -> None:
    kind = await kinds(fake.url)
    resp, attempt = await send(kind, None)
    assert resp.status == 200 and attempt.status == 200
    (seen,) = fake.requests
    assert seen.path == "/v1/models" and seen.headers["x-api-key"] == SECRET
    assert fake.seen("/v1/messages") == []
    kind = await kinds(fake.url, api_key="sk-ant-wrong")
    resp, _ = await send(kind, None)
    assert resp.status == 401


# -- end to end: the daemon, the llm plugin, the official openai SDK ---------------------------


async def test_through_the_gateway_with_the_openai_sdk(
    fake: FakeAnthropic, llm_config: Any, llm_gateway: Any
) -> None:
    upstream = {
        "kind": "anthropic",
        "base_url": fake.url,
        "api_key": SECRET,
        "health": {"interval": "200ms", "timeout": "1s"},
    }
    cfg = llm_config(
        {"claude": upstream},
        {"models": {"smart": [{"upstream": "claude", "model": MODEL}]}},
    )
    gw = await llm_gateway(cfg)
    client = gw.client()
    fake.chunks = 4
    chat = await client.chat.completions.create(
        model="smart",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        max_tokens=10,
    )
    seen = fake.requests[-1]
    assert seen.headers["x-api-key"] == SECRET
    assert gw.key not in json.dumps(seen.headers)  # the client's gateway key stays with us
    assert seen.body["model"] == MODEL and seen.body["system"] == "be brief"
    assert chat.choices[0].message.content == "t0 t1 t2 t3 "
    assert chat.choices[0].finish_reason == "stop"
    assert seen.usage is not None and chat.usage is not None
    assert chat.usage.prompt_tokens == seen.usage["prompt_tokens"]
    assert chat.usage.completion_tokens == 4

    stream = await client.chat.completions.create(
        model="smart",
        messages=[{"role": "user", "content": "hello there"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "t0 t1 t2 t3 "
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    streamed = fake.requests[-1].usage
    assert streamed is not None
    assert chunks[-1].usage.prompt_tokens == streamed["prompt_tokens"]
    assert chunks[-1].usage.completion_tokens == 4

    # Without include_usage the client gets no usage chunk (the gateway asked for it anyway).
    stream = await client.chat.completions.create(
        model="smart", messages=[{"role": "user", "content": "x"}], stream=True
    )
    chunks = [c async for c in stream]
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)

    legacy = await client.completions.create(model="smart", prompt="Say this", max_tokens=2)
    assert legacy.choices[0].text == "t0 t1 "
    assert fake.requests[-1].body["messages"] == [{"role": "user", "content": "Say this"}]

    records = await gw.usage(count=4)
    assert len(records) == 4
    assert all(r.source == "provider" and r.status == 200 for r in records)
    assert [r.completion_tokens for r in records] == [4, 4, 4, 2]
    messages = fake.seen("/v1/messages")
    assert [r.prompt_tokens for r in records] == [s.usage["prompt_tokens"] for s in messages]

    # A client that goes away mid-stream: the provider sees its connection go at once.
    fake.push(Fault(chunk_delay=0.05, chunks=1000))
    stream = await client.chat.completions.create(
        model="smart", messages=[{"role": "user", "content": "x"}], stream=True
    )
    async for c in stream:
        if c.choices and c.choices[0].delta.content:
            break
    closed = time.monotonic()
    await stream.close()
    await fake.wait_idle()
    cancelled_at = fake.seen("/v1/messages")[-1].cancelled_at
    assert cancelled_at is not None and cancelled_at - closed < 0.1
    (last,) = [r for r in await gw.usage(count=5) if r.cancelled]
    assert last.stream and last.completion_tokens >= 1

    # Health checks probe the model list (never a billed message); the key is in no log line.
    probes = fake.seen("/v1/models")
    assert probes and all(p.headers["x-api-key"] == SECRET for p in probes)
    assert len(fake.seen("/v1/messages")) == 5
    assert SECRET not in gw.logs()
    await client.close()


async def test_a_failing_claude_falls_back_and_a_late_error_reaches_the_client(
    fake: FakeAnthropic, llm_config: Any, llm_gateway: Any
) -> None:
    ollama = await FakeOllama(models=("llama3.2:3b",)).start()
    try:
        cfg = llm_config(
            {
                "claude": {"kind": "anthropic", "base_url": fake.url, "api_key": SECRET},
                "local": {"kind": "ollama", "base_url": ollama.url},
            },
            {
                "models": {
                    "smart": [{"upstream": "claude", "model": MODEL}],
                    "local": [{"upstream": "local", "model": "llama3.2:3b"}],
                },
                "fallbacks": {"smart": ["local"]},
            },
        )
        gw = await llm_gateway(cfg)
        client = gw.client()
        fake.push(Fault(status=529, message="Overloaded"))  # before the first byte: fallback
        chat = await client.chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert chat.choices[0].message.content == "t0 t1 "
        assert [s.path for s in ollama.requests] == ["/api/chat"]

        # Streamed, an overloaded error right after message_start: still no byte sent, so
        # the gateway falls back too.
        fake.push(Fault(error_after=0, message="Overloaded"))
        stream = await client.chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "hi"}], max_tokens=2, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "t0 t1 " and len(ollama.requests) == 2

        fake.push(Fault(error_after=2, message="Overloaded"))  # after it: an error event
        fake.chunks = 5
        stream = await client.chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = ""
        with pytest.raises(openai.APIError) as info:
            async for c in stream:
                text += (c.choices[0].delta.content or "") if c.choices else ""
        assert text == "t0 t1 " and "Overloaded" in str(info.value)
        assert len(ollama.requests) == 2  # no fallback once the client had bytes
        await client.close()
    finally:
        await ollama.close()


async def test_events_of_an_unexpected_shape_are_malformed(kinds: KindFactory) -> None:
    """Whatever the provider sends is data: an event whose shape does not fit is ``malformed``."""

    async def messages(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        start = {"type": "message_start", "message": {"id": "msg_1", "usage": {}}}
        await resp.write(b"event: message_start\ndata: " + json.dumps(start).encode() + b"\n\n")
        bad = {
            "type": "content_block_start",
            "index": "first",
            "content_block": {"type": "tool_use"},
        }
        await resp.write(b"event: content_block_start\ndata: " + json.dumps(bad).encode() + b"\n\n")
        await asyncio.sleep(5)
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    async with TestServer(app, host="127.0.0.1") as server:
        kind = await kinds(str(server.make_url("")).rstrip("/"))
        resp, _ = await send(kind, exchange("chat", chat(stream=True)))
        assert isinstance(resp.body, AsyncIterator)
        with pytest.raises(StreamFailed) as failed:
            await anext(resp.body)
        assert failed.value.kind == "malformed"


BEFORE_FIRST_BYTE = [
    Fault(status=429, message="rate limited"),
    Fault(status=500, message="Internal server error"),
    Fault(status=529, message="Overloaded"),
    Fault(status=400, message="prompt is too long: 208310 tokens > 200000 maximum"),
    Fault(delay=3),  # no head within timeouts.total
    Fault(stall_after=0),  # streamed: message_start, then silence; whole: part of the body
    Fault(cut_after=0),
    Fault(malformed_after=0),
    Fault(error_after=0, message="Overloaded"),  # streamed only (whole: a normal answer)
]


async def test_fault_matrix_through_the_gateway(
    fake: FakeAnthropic, llm_config: Any, llm_gateway: Any
) -> None:
    """Every fault of Claude's before the first byte, streamed or not, is recovered by the
    fallback model; after it, the stream ends with an error the SDK raises, never cleanly."""
    ollama = await FakeOllama(models=("llama3.2:3b",)).start()
    try:
        timeouts = {"read": "500ms", "total": "2s"}
        cfg = llm_config(
            {
                "claude": {"kind": "anthropic", "base_url": fake.url, "api_key": SECRET,
                           "timeouts": timeouts},
                "local": {"kind": "ollama", "base_url": ollama.url},
            },
            {
                "models": {
                    "smart": [{"upstream": "claude", "model": MODEL}],
                    "local": [{"upstream": "local", "model": "llama3.2:3b"}],
                },
                "fallbacks": {"smart": ["local"]},
                "breaker": {"failures": 1000},  # every fault must reach this kind
            },
        )  # fmt: skip
        gw = await llm_gateway(cfg)
        client = gw.client()
        fake.chunks = 5
        served = sent = 0
        for stream in (False, True):
            for fault in BEFORE_FIRST_BYTE:
                fake.push(fault)
                sent += 1
                text = await chat_text(client, "smart", stream)
                assert len(fake.seen("/v1/messages")) == sent  # the fault was met
                if not stream and fault.error_after is not None:
                    assert text == "t0 t1 ", fault  # no error event in a whole answer
                    continue
                served += 1
                assert text == "t0 t1 " and len(ollama.seen("/api/chat")) == served, (stream, fault)

        for fault in [
            Fault(error_after=2),
            Fault(cut_after=2),
            Fault(stall_after=2),
            Fault(malformed_after=2),
        ]:
            fake.push(fault)
            chunks = await client.chat.completions.create(
                model="smart", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            text = ""
            with pytest.raises(openai.APIError):
                async for c in chunks:
                    text += (c.choices[0].delta.content or "") if c.choices else ""
            assert text == "t0 t1 ", fault
        assert len(ollama.seen("/api/chat")) == served  # no fallback once bytes were sent
        await client.close()
    finally:
        await ollama.close()
