"""The llm plugin end to end: the real daemon, the official openai SDK, a fake provider."""

from __future__ import annotations

from fake_openai_server import FakeOpenAI
from llm_testkit import openai_upstream


async def test_chat_through_the_sdk(fake_openai: FakeOpenAI, llm_config, llm_gateway) -> None:
    cfg = llm_config(
        {"main": openai_upstream(fake_openai.url)},
        {"models": {"m": [{"upstream": "main", "model": "fake-model"}]}},
    )
    gw = await llm_gateway(cfg)
    client = gw.client()
    chat = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hello there"}], max_tokens=4
    )
    assert chat.choices[0].message.content == "t0 t1 t2 t3 "
    assert chat.usage is not None and chat.usage.completion_tokens == 4
    seen = fake_openai.requests[-1]
    assert seen.body["model"] == "fake-model"
    assert seen.headers["Authorization"] == "Bearer sk-provider-secret"
    await client.close()
