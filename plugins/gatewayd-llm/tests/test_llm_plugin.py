"""The llm plugin end to end: the real daemon, the official openai SDK (and raw HTTP where the
bytes matter), fake OpenAI-compatible providers on 127.0.0.1."""

from __future__ import annotations

import copy
import itertools
import json
import time
from typing import Any

import aiohttp
import openai
import pytest
from fake_openai_server import FakeOpenAI, Fault
from llm_testkit import LlmGateway, openai_upstream

MSGS = [{"role": "user", "content": "hello there"}]
CHAT = {"model": "m", "messages": MSGS}


def one_model(fake: FakeOpenAI, **llm: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    upstreams = {"main": openai_upstream(fake.url)}
    return upstreams, {"models": {"m": [{"upstream": "main", "model": "fake-model"}]}, **llm}


async def raw_post(gw: LlmGateway, path: str, body: Any, **kw: Any) -> tuple[int, Any, Any]:
    """(status, headers, body: JSON or the raw bytes) of a POST with the gateway's key."""
    headers = {"Authorization": f"Bearer {gw.key}", **kw.pop("headers", {})}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as s,
        s.post(gw.url + path, data=data, headers=headers, **kw) as r,
    ):
        raw = await r.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw
        return r.status, r.headers, parsed


def sse_events(raw: bytes) -> list[Any]:
    assert raw.endswith(b"\n\n"), raw[-200:]
    out: list[Any] = []
    for event in raw.split(b"\n\n")[:-1]:
        assert event.startswith(b"data: "), event
        data = event[6:]
        out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


# -- answers -----------------------------------------------------------------------------------


async def test_chat_streamed_and_not_through_the_sdk(
    fake_openai: FakeOpenAI, llm_config, llm_gateway
) -> None:
    upstreams, llm = one_model(
        fake_openai, prices={"m": {"input_per_mtok": 1e6, "output_per_mtok": 2e6}}
    )
    gw = await llm_gateway(llm_config(upstreams, llm))
    async with gw.client() as client:
        chat = await client.chat.completions.with_raw_response.create(
            model="m", messages=MSGS, max_tokens=4
        )
        parsed = chat.parse()
        assert parsed.choices[0].message.content == "t0 t1 t2 t3 "
        assert parsed.usage is not None and parsed.usage.completion_tokens == 4
        rid = chat.headers["x-request-id"]
        assert chat.headers["x-llm-model"] == "m" and chat.headers["x-llm-fallbacks"] == "0"
        seen = fake_openai.requests[-1]
        assert seen.body["model"] == "fake-model" and seen.request_id == rid
        assert seen.headers["Authorization"] == "Bearer sk-provider-secret"
        assert gw.key not in json.dumps(seen.headers)  # the client's key stays at the gateway

        stream = await client.chat.completions.create(
            model="m",
            messages=MSGS,
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage is not None:
                usage = chunk.usage
        assert text == "t0 t1 t2 t3 t4 "
        assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (3, 5)

    first, second = await gw.usage(2)
    assert (first.request_id, first.model, first.deployment) == (rid, "m", "m#0")
    assert (first.upstream, first.provider_model, first.key_id, first.tenant) == (
        "main",
        "fake-model",
        "test",
        "acme",
    )
    assert (first.prompt_tokens, first.completion_tokens, first.source) == (3, 4, "provider")
    assert first.cost == pytest.approx(3 * 1 + 4 * 2)  # dollars per million tokens x 1e6
    assert (first.status, first.stream, first.cancelled, first.fallbacks) == (200, False, False, 0)
    assert (second.prompt_tokens, second.completion_tokens, second.source) == (3, 5, "provider")
    assert second.stream and second.ttft_ms is not None and second.ttft_ms >= 0
    assert first.ttft_ms is None  # time to first token: streamed answers only


async def test_usage_chunk_is_stripped_unless_asked(
    fake_openai: FakeOpenAI, llm_config, llm_gateway
) -> None:
    gw = await llm_gateway(llm_config(*one_model(fake_openai)))
    body = {"model": "m", "messages": MSGS, "stream": True, "max_tokens": 2}
    status, headers, raw = await raw_post(gw, "/v1/chat/completions", body)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    assert all("usage" not in e for e in events[:-1])  # neither the chunk nor "usage": null
    assert [e["choices"][0]["delta"].get("content") for e in events[1:3]] == ["t0 ", "t1 "]
    # ... but the gateway asked for it, and recorded it
    assert fake_openai.requests[-1].body["stream_options"] == {"include_usage": True}
    (rec,) = await gw.usage(1)
    assert (rec.prompt_tokens, rec.completion_tokens, rec.source) == (3, 2, "provider")

    body["stream_options"] = {"include_usage": True}
    status, _, raw = await raw_post(gw, "/v1/chat/completions", body)
    events = sse_events(raw)
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 2
    assert events[1]["usage"] is None  # what OpenAI sends on the other chunks, as it sent it


async def test_completions_embeddings_generate_and_models(
    fake_openai: FakeOpenAI, llm_config, llm_gateway
) -> None:
    upstreams = {"main": openai_upstream(fake_openai.url)}
    llm = {
        "models": {
            "m": [{"upstream": "main", "model": "fake-model", "context_window": 8192}],
            "e": [{"upstream": "main", "model": "fake-embed", "owned_by": "acme-ml"}],
        }
    }
    gw = await llm_gateway(llm_config(upstreams, llm))
    async with gw.client() as client:
        text = await client.completions.create(model="m", prompt="a b c", max_tokens=2)
        assert text.choices[0].text == "t0 t1 " and text.usage is not None
        parts = []
        async for chunk in await client.completions.create(
            model="m", prompt="a b c", max_tokens=3, stream=True
        ):
            parts.extend(c.text for c in chunk.choices)
        assert "".join(parts) == "t0 t1 t2 "
        emb = await client.embeddings.create(model="e", input=["x y", "z"])
        assert [len(d.embedding) for d in emb.data] == [3, 3]
        assert fake_openai.requests[-1].body["model"] == "fake-embed"
        models = await client.models.list()
        listed = {m.id: m for m in models.data}
        assert set(listed) == {"m", "e"}
        assert listed["e"].owned_by == "acme-ml" and listed["m"].owned_by == "main"
        assert (listed["m"].model_extra or {})["context_window"] == 8192
        one = await client.models.retrieve("m")
        assert one.id == "m"
        with pytest.raises(openai.NotFoundError) as err:
            await client.models.retrieve("nope")
        assert err.value.code == "model_not_found"
    status, _, out = await raw_post(
        gw, "/v1/generate", {"model": "m", "prompt": "say hi", "max_tokens": 2, "system": "be"}
    )
    assert status == 200 and out["text"] == "t0 t1 " and out["object"] == "generation"
    assert out["usage"]["completion_tokens"] == 2
    assert fake_openai.requests[-1].body["messages"] == [
        {"role": "system", "content": "be"},
        {"role": "user", "content": "say hi"},
    ]
    fake_openai.push(Fault(usage=False))  # a provider that says nothing: an estimate
    status, _, out = await raw_post(gw, "/v1/chat/completions", {**CHAT, "max_tokens": 2})
    assert status == 200 and "usage" not in out
    records = await gw.usage(5)
    assert [r.source for r in records] == ["provider"] * 4 + ["estimated"]
    assert records[2].model == "e" and records[2].completion_tokens == 0
    assert (records[4].prompt_tokens, records[4].completion_tokens) == (3 + 4 + 3, 2)


# -- errors ------------------------------------------------------------------------------------


def assert_openai_error(status: int, headers: Any, body: Any, want: int, code: str | None) -> None:
    assert status == want, body
    err = body["error"]
    assert set(err) >= {"message", "type", "code", "param"}
    assert err["code"] == code
    assert err["request_id"] == headers["X-Request-ID"]


async def test_errors_are_openai_shaped(fake_openai: FakeOpenAI, llm_config, llm_gateway) -> None:
    gw = await llm_gateway(llm_config(*one_model(fake_openai, max_body="1KiB")))
    chat = "/v1/chat/completions"
    assert_openai_error(*await raw_post(gw, chat, b"{not json"), 400, "invalid_json")
    assert_openai_error(*await raw_post(gw, chat, b"[1, 2]"), 400, "invalid_json")
    status, headers, body = await raw_post(gw, chat, {"messages": MSGS})
    assert_openai_error(status, headers, body, 400, None)
    assert body["error"]["param"] == "model" and body["error"]["type"] == "invalid_request_error"
    status, headers, body = await raw_post(gw, chat, {"model": "gpt-9", "messages": MSGS})
    assert_openai_error(status, headers, body, 404, "model_not_found")
    assert body["error"]["type"] == "invalid_request_error" and "gpt-9" in body["error"]["message"]
    status, headers, body = await raw_post(gw, chat, {"model": "m", "messages": []})
    assert_openai_error(status, headers, body, 400, "invalid_request")
    assert body["error"]["param"] == "messages"
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 2000}]}
    assert_openai_error(*await raw_post(gw, chat, big), 413, "request_too_large")
    assert_openai_error(*await raw_post(gw, "/v1/nothing", {}), 404, "unknown_url")
    async with aiohttp.ClientSession() as s:
        auth = {"Authorization": f"Bearer {gw.key}"}
        async with s.get(gw.url + chat, headers=auth) as r:
            assert_openai_error(r.status, r.headers, await r.json(), 405, "method_not_allowed")
            assert r.headers["Allow"] == "POST"
    async with gw.client() as client:
        with pytest.raises(openai.NotFoundError) as err:
            await client.chat.completions.create(model="gpt-9", messages=MSGS)  # type: ignore
        assert err.value.code == "model_not_found"
    assert fake_openai.requests == []  # none of them reached the provider
    records = await gw.usage(7)  # every model request has its one record
    assert [r.status for r in records] == [400, 400, 400, 404, 400, 413, 404]
    assert all(r.prompt_tokens == r.completion_tokens == 0 for r in records)


async def test_a_providers_refusal_is_passed_on_without_its_secrets(
    make_fake_openai, llm_config, llm_gateway
) -> None:
    fake = await make_fake_openai(api_key="sk-right-one")
    upstreams = {"main": openai_upstream(fake.url, api_key="sk-wrong-secret-123")}
    llm = {"models": {"m": [{"upstream": "main", "model": "fake-model"}]}}
    gw = await llm_gateway(llm_config(upstreams, llm))
    fake.api_key = None
    fake.push(
        Fault(status=400, message="bad temperature (key sk-wrong-secret-123)", code="invalid_value")
    )
    status, headers, body = await raw_post(gw, "/v1/chat/completions", CHAT)
    assert_openai_error(status, headers, body, 400, "invalid_value")
    assert "bad temperature" in body["error"]["message"]
    assert "sk-wrong-secret-123" not in json.dumps(body)
    assert len(fake.requests) == 1  # a refusal of the request itself is not retried elsewhere
    fake.api_key = "sk-right-one"  # now the provider refuses the gateway's key
    status, headers, body = await raw_post(gw, "/v1/chat/completions", CHAT)
    assert status == 502 and "credentials" in body["error"]["message"]
    assert body["error"]["code"] == "upstream_auth_failed"
    assert "sk-wrong" not in json.dumps(body)
    await gw.usage(2)
    assert "sk-wrong-secret-123" not in gw.logs() and gw.key not in gw.logs()
    assert "sk-wrong-secret-123" not in await gw.metrics()


async def test_context_windows_choose_the_deployment(
    make_fake_openai, llm_config, llm_gateway
) -> None:
    small, large = await make_fake_openai(), await make_fake_openai()
    upstreams = {"small": openai_upstream(small.url), "large": openai_upstream(large.url)}
    llm = {
        "models": {
            "m": [
                {"upstream": "small", "model": "s", "context_window": 100, "weight": 100},
                {"upstream": "large", "model": "l", "context_window": 1000, "weight": 0.01},
            ]
        },
        "default_max_tokens": 50,
    }
    gw = await llm_gateway(llm_config(upstreams, llm))
    long = [{"role": "user", "content": "word " * 200}]  # ~250 tokens estimated
    async with gw.client() as client:
        for _ in range(3):
            await client.chat.completions.create(model="m", messages=long)
        await client.chat.completions.create(model="m", messages=MSGS)
        assert (len(small.requests), len(large.requests)) == (1, 3)
        with pytest.raises(openai.BadRequestError) as err:
            await client.chat.completions.create(model="m", messages=long, max_tokens=900)
        assert err.value.code == "context_length_exceeded"
        assert "1000" in err.value.message


async def test_limits_answer_429_with_retry_after(
    fake_openai: FakeOpenAI, llm_config, llm_gateway
) -> None:
    cfg = llm_config(*one_model(fake_openai, limits=[{"requests": "2/min", "key": "api_key"}]))
    gw = await llm_gateway(cfg, keys={"a": "acme", "b": "acme"})
    body = {"model": "m", "messages": MSGS}
    for _ in range(2):
        assert (await raw_post(gw, "/v1/chat/completions", body))[0] == 200
    status, headers, out = await raw_post(gw, "/v1/chat/completions", body)
    assert_openai_error(status, headers, out, 429, "rate_limit_exceeded")
    assert out["error"]["type"] == "rate_limit_error" and int(headers["Retry-After"]) >= 1
    other = {"Authorization": f"Bearer {gw.keys['b']}"}
    assert (await raw_post(gw, "/v1/chat/completions", body, headers=other))[0] == 200
    assert len(fake_openai.requests) == 3


async def test_a_deployment_over_its_own_limits_is_skipped(
    make_fake_openai, llm_config, llm_gateway
) -> None:
    first, second = await make_fake_openai(), await make_fake_openai()
    upstreams = {"a": openai_upstream(first.url), "b": openai_upstream(second.url)}
    own = [{"requests": "2/min", "key": "global"}]
    llm = {
        "models": {
            "m": [
                {"upstream": "a", "model": "x", "weight": 1000, "limits": own},
                {"upstream": "b", "model": "y", "weight": 0.001, "limits": own},
            ]
        }
    }
    gw = await llm_gateway(llm_config(upstreams, llm))
    statuses = [(await raw_post(gw, "/v1/chat/completions", CHAT))[0] for _ in range(5)]
    assert statuses == [200, 200, 200, 200, 429]
    assert (len(first.requests), len(second.requests)) == (2, 2)  # never asked when over
    status, headers, body = await raw_post(gw, "/v1/chat/completions", CHAT)
    assert_openai_error(status, headers, body, 429, "rate_limit_exceeded")
    assert int(headers["Retry-After"]) >= 1


async def test_the_sdk_reads_the_gateways_own_refusals(
    fake_openai: FakeOpenAI, llm_config, llm_gateway
) -> None:
    cfg = llm_config(*one_model(fake_openai))
    cfg["routes"][0]["plugins"].insert(1, {"rate_limit": {"rate": "1/min", "key": "api_key"}})
    gw = await llm_gateway(cfg)
    async with gw.client(key="gwd_test_wrong") as client:  # key_auth answers, before llm
        with pytest.raises(openai.AuthenticationError) as err:
            await client.chat.completions.create(model="m", messages=MSGS)  # type: ignore
    assert err.value.type == "authentication_error" and err.value.code is not None
    assert err.value.response.headers.get("WWW-Authenticate")
    assert (await raw_post(gw, "/v1/chat/completions", CHAT))[0] == 200
    status, headers, body = await raw_post(gw, "/v1/chat/completions", CHAT)  # rate_limit's
    assert_openai_error(status, headers, body, 429, body["error"]["code"])
    assert body["error"]["type"] == "rate_limit_error" and headers["Retry-After"]
    assert len(fake_openai.requests) == 1


async def test_chunks_go_on_as_they_come(fake_openai: FakeOpenAI, llm_config, llm_gateway) -> None:
    """Nothing is buffered: each token reaches the client when the provider sends it."""
    fake_openai.push(Fault(chunk_delay=0.3))
    gw = await llm_gateway(llm_config(*one_model(fake_openai)))
    arrivals: list[float] = []
    async with gw.client() as client:
        stream = await client.chat.completions.create(
            model="m", messages=MSGS, max_tokens=3, stream=True
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) == 3 and all(0.2 < g < 0.45 for g in gaps), gaps


async def test_a_reload_keeps_streams_and_their_records(
    fake_openai: FakeOpenAI, llm_config, llm_gateway
) -> None:
    """A stream that started before a reload with another config ends on its generation, and
    its record is written once; the new config serves at once; the metrics carry on."""
    upstreams, llm = one_model(fake_openai)
    gw = await llm_gateway(llm_config(upstreams, llm))
    fake_openai.push(Fault(chunk_delay=0.2))
    async with gw.client() as client:
        stream = await client.chat.completions.create(
            model="m", messages=MSGS, max_tokens=5, stream=True
        )
        text = ""
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content == "t1 ":
                llm2 = {**llm, "models": {**llm["models"], "n": llm["models"]["m"]}}
                cfg = copy.deepcopy(gw.config)  # the same ports and state dir
                cfg["routes"][0]["plugins"][-1] = {"llm": llm2}
                await gw.reload(cfg)
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
        assert text == "t0 t1 t2 t3 t4 "
        await client.chat.completions.create(model="n", messages=MSGS, max_tokens=1)
        assert {m.id for m in (await client.models.list()).data} == {"m", "n"}
    first, second = await gw.usage(2)
    assert (first.model, first.completion_tokens, first.source) == ("m", 5, "provider")
    assert (second.model, second.completion_tokens) == ("n", 1)
    tokens = "gatewayd_llm_tokens_total"
    assert await gw.metric(tokens, model="m", type="output", provider="main") == 5
    assert await gw.metric(tokens, model="n", type="output", tenant="acme") == 1
    assert await gw.metric("gen_ai_client_token_usage_count", gen_ai_token_type="input") == 2
