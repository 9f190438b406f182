"""The distribution's test fixtures themselves: the fake provider speaks OpenAI's wire format
(the official SDK reads it), its faults happen, and the gateway fixture runs a real daemon."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import pytest
from fake_openai_server import FakeOpenAI, Fault
from llm_testkit import openai_upstream


async def test_the_sdk_reads_the_fakes_replies(fake_openai: FakeOpenAI, openai_client) -> None:
    client = openai_client(fake_openai.url, "k")
    chat = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hello there"}], max_tokens=4
    )
    assert chat.choices[0].message.content == "t0 t1 t2 t3 "
    assert chat.usage is not None and chat.usage.completion_tokens == 4
    assert chat.usage.prompt_tokens == 3  # two words and one message
    stream = await client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage = [], None
    async for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(parts) == "t0 t1 t2 " and usage is not None and usage.completion_tokens == 3
    assert fake_openai.requests[-1].usage == {"prompt_tokens": 2, "completion_tokens": 3}
    text = await client.completions.create(model="m", prompt="a b c", max_tokens=2)
    assert text.choices[0].text == "t0 t1 "
    emb = await client.embeddings.create(model="e", input=["x", "y"])
    assert len(emb.data) == 2 and emb.usage.prompt_tokens == 3
    models = await client.models.list()
    assert [m.id for m in models.data] == ["fake-model"]


async def test_faults_are_carried_out(fake_openai: FakeOpenAI, openai_client) -> None:
    client = openai_client(fake_openai.url, "k")
    msgs = [{"role": "user", "content": "hi"}]
    fake_openai.push(Fault(status=429, retry_after=3))
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="m", messages=msgs)
    fake_openai.push(Fault(cut_after=1))
    stream = await client.chat.completions.create(model="m", messages=msgs, stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    fake_openai.push(Fault(malformed_after=1))
    stream = await client.chat.completions.create(model="m", messages=msgs, stream=True)
    with pytest.raises(ValueError):  # the SDK fails on a chunk that is not JSON
        async for _ in stream:
            pass
    assert [s.fault is not None for s in fake_openai.requests] == [True, True, True]


async def test_a_client_that_leaves_is_seen_at_once(fake_openai: FakeOpenAI) -> None:
    fake_openai.push(Fault(stall_after=1))
    body = {"model": "m", "messages": [], "stream": True}
    async with aiohttp.ClientSession() as s:
        resp = await s.post(fake_openai.url + "/chat/completions", json=body)
        await resp.content.readline()
        left = time.monotonic()
        resp.close()
    for _ in range(100):
        if fake_openai.requests[-1].cancelled_at is not None:
            break
        await asyncio.sleep(0.01)
    cancelled = fake_openai.requests[-1].cancelled_at
    assert cancelled is not None and cancelled - left < 0.1


async def test_the_gateway_fixture_runs_the_daemon(fake_openai, llm_config, llm_gateway) -> None:
    cfg = llm_config(
        {"main": openai_upstream(fake_openai.url)},
        {"models": {"m": [{"upstream": "main", "model": "fake-model"}]}},
    )
    gw = await llm_gateway(cfg, keys={"k1": "acme"})
    assert gw.key.startswith("gwd_k1_") and gw.pid > 0 and gw.log_path.exists()
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/v1/models") as r:
            assert r.status == 401  # key_auth runs before llm
        headers = {"Authorization": f"Bearer {gw.key}"}
        async with s.get(gw.url + "/v1/models", headers=headers) as r:
            assert r.status != 401
