"""The provider kinds with ``credential:`` (a secret of the process's Credentials): read at send
time, a 401 retried once with the alternate during a rotation's grace (and not after it),
requests in flight keep theirs, every secret scrubbed, the health probe sends the current one.
Real fake providers on 127.0.0.1, the kinds driven as the daemon drives them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pydantic
import pytest
from fake_native_servers import FakeAnthropic, FakeOllama
from fake_openai_server import FakeOpenAI, Fault
from gatewayd_llm.credentials import SHARED_NAME, Credentials
from gatewayd_llm.kinds.anthropic import AnthropicUpstream
from gatewayd_llm.kinds.base import HttpProvider
from gatewayd_llm.kinds.ollama import OllamaUpstream
from gatewayd_llm.kinds.openai import OpenAIUpstream, OpenAIUpstreamConfig
from gatewayd_llm.sealing import generate_key_file
from llm_kind_harness import body_json, chat_text, exchange, read_events, send
from llm_testkit import ADMIN_TOKEN, FakeFactory, GatewayFactory

from gatewayd.testing import HarnessServices, upstream_context

OLD = "sk-old-Secret-aaaaaaaaaaaaaaaa"
NEW = "sk-new-Secret-bbbbbbbbbbbbbbbb"


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


class Setup:
    """One process's services: its Credentials (on a clock the test moves) and kinds."""

    def __init__(self) -> None:
        self.services = HarnessServices()
        self.clock = Clock()
        self.creds = self.services.stores.shared(SHARED_NAME, lambda: Credentials(self.clock))
        self.kinds: list[HttpProvider] = []

    async def kind(self, cls: type[HttpProvider], base_url: str, **config: Any) -> HttpProvider:
        cfg = cls.Config.model_validate(
            {"kind": cls.kind, "base_url": base_url, "credential": "prov-1", **config}
        )
        kind = cls("prov", cfg, upstream_context("prov", self.services))  # type: ignore[arg-type]
        await kind.start()
        self.kinds.append(kind)
        return kind

    async def close(self) -> None:
        for kind in self.kinds:
            await kind.close()
        await self.services.close()


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    s = Setup()
    yield s
    await s.close()


def chat(model: str, **body: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        **body,
    }


# Each kind with its fake: (kind class, fake factory, the header the fake checks, how a secret
# appears in it, a model the fake serves).
Kind = tuple[type[HttpProvider], Callable[[], Awaitable[Any]], str, Callable[[str], str], str]
KINDS: dict[str, Kind] = {
    "openai": (
        OpenAIUpstream,
        lambda: FakeOpenAI().start(),
        "Authorization",
        lambda s: f"Bearer {s}",
        "fake-model",
    ),
    "anthropic": (
        AnthropicUpstream,
        lambda: FakeAnthropic(models=("claude-x",)).start(),
        "x-api-key",
        lambda s: s,
        "claude-x",
    ),
    "ollama": (
        OllamaUpstream,
        lambda: FakeOllama(models=("llama3",)).start(),
        "Authorization",
        lambda s: f"Bearer {s}",
        "llama3",
    ),
}


def test_credential_and_api_key_are_exclusive() -> None:
    with pytest.raises(pydantic.ValidationError) as err:
        OpenAIUpstreamConfig.model_validate(
            {"kind": "openai", "base_url": "http://x/v1", "api_key": OLD, "credential": "p"}
        )
    assert "credential: give either api_key or credential, not both" in str(err.value)
    assert OLD not in str(err.value)
    with pytest.raises(pydantic.ValidationError, match="credential"):
        OpenAIUpstreamConfig.model_validate(
            {"kind": "openai", "base_url": "http://x/v1", "credential": ""}
        )


@pytest.mark.parametrize("name", sorted(KINDS))
@pytest.mark.parametrize("stream", [False, True])
async def test_rotation_with_grace_retries_once_with_the_old_secret(
    setup: Setup, name: str, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cls, make_fake, header, shown, model = KINDS[name]
    fake = await make_fake()
    try:
        kind = await setup.kind(cls, fake.url)
        setup.creds.set("prov-1", OLD)
        fake.api_key = OLD
        resp, _ = await send(kind, exchange("chat", chat(model, stream=stream)))
        assert resp.status == 200
        await (read_events(resp.body) if stream else asyncio.sleep(0))
        assert [r.headers[header] for r in fake.requests] == [shown(OLD)]

        # Rotated on the gateway first; the provider accepts only the old one for now.
        setup.creds.set("prov-1", NEW, grace=300.0)
        fake.requests.clear()
        resp, attempt = await send(kind, exchange("chat", chat(model, stream=stream)))
        assert resp.status == 200, resp.body
        if stream:
            assert len(await read_events(resp.body)) > 1
        assert [r.headers[header] for r in fake.requests] == [shown(NEW), shown(OLD)]
        assert attempt.status == 200

        # The provider has the new one: sent first, no retry.
        fake.api_key = NEW
        fake.requests.clear()
        resp, _ = await send(kind, exchange("chat", chat(model, stream=stream)))
        assert resp.status == 200
        await (read_events(resp.body) if stream else asyncio.sleep(0))
        assert [r.headers[header] for r in fake.requests] == [shown(NEW)]

        # After the grace, a provider that still has only the old one: one try, a 401.
        fake.api_key = OLD
        setup.clock.now += 301.0
        fake.requests.clear()
        resp, attempt = await send(kind, exchange("chat", chat(model, stream=stream)))
        assert resp.status == 401 and attempt.status == 401
        error = body_json(resp)["error"]
        assert error["message"] == "upstream 'prov' refused the gateway's credentials (401)"
        assert [r.headers[header] for r in fake.requests] == [shown(NEW)]
        for secret in (OLD, NEW):
            assert secret not in str(resp.body) and secret[:12] not in caplog.text
    finally:
        await fake.close()


async def test_without_grace_there_is_no_retry(setup: Setup) -> None:
    fake = await FakeOpenAI(api_key=OLD).start()
    try:
        kind = await setup.kind(OpenAIUpstream, fake.url)
        setup.creds.set("prov-1", OLD)
        setup.creds.set("prov-1", NEW)  # grace 0
        resp, _ = await send(kind, exchange("chat", chat("fake-model")))
        assert resp.status == 401
        assert [r.headers["Authorization"] for r in fake.requests] == [f"Bearer {NEW}"]
    finally:
        await fake.close()


async def test_a_request_in_flight_keeps_its_secret_new_ones_use_the_new(setup: Setup) -> None:
    fake = await FakeOpenAI(chunks=6, chunk_delay=0.05).start()  # accepts any key, records it
    try:
        kind = await setup.kind(OpenAIUpstream, fake.url)
        setup.creds.set("prov-1", OLD)
        first, _ = await send(kind, exchange("chat", chat("fake-model", stream=True)))
        assert isinstance(first.body, AsyncIterator)
        events = [await anext(first.body)]  # streaming with OLD
        setup.creds.set("prov-1", NEW, grace=60.0)
        second, _ = await send(kind, exchange("chat", chat("fake-model")))
        assert second.status == 200
        async for chunk in first.body:
            events.append(chunk)
        assert b"[DONE]" in events[-1]
        assert [r.headers["Authorization"] for r in fake.requests] == [
            f"Bearer {OLD}",
            f"Bearer {NEW}",
        ]
        assert fake.requests[0].cancelled_at is None  # the first finished with its secret
    finally:
        await fake.close()


async def test_every_secret_of_the_credential_is_scrubbed(setup: Setup) -> None:
    fake = await FakeOpenAI().start()
    try:
        kind = await setup.kind(OpenAIUpstream, fake.url)
        setup.creds.set("prov-1", OLD)
        setup.creds.set("prov-1", NEW, grace=60.0)
        fake.push(Fault(status=400, message=f"bad request for {OLD} and {NEW}"))
        resp, _ = await send(kind, exchange("chat", chat("fake-model")))
        message = body_json(resp)["error"]["message"]
        assert message == "bad request for *** and ***"
        assert kind.scrub(f"x{OLD}y{NEW}z") == "x***y***z"
    finally:
        await fake.close()


@pytest.mark.parametrize("name", sorted(KINDS))
async def test_health_probe_sends_the_current_secret(setup: Setup, name: str) -> None:
    cls, make_fake, _, _, _ = KINDS[name]
    fake = await make_fake()
    try:
        kind = await setup.kind(cls, fake.url)
        setup.creds.set("prov-1", OLD)
        fake.api_key = OLD
        resp, _ = await send(kind, None)  # no exchange: gatewayd's active health check
        assert resp.status == 200
        setup.creds.set("prov-1", NEW, grace=60.0)  # the probe does not retry: health is now
        resp, _ = await send(kind, None)
        if name == "ollama":  # the fake's /api/tags checks no key: see what was sent
            assert fake.requests[-1].headers["Authorization"] == f"Bearer {NEW}"
        else:
            assert resp.status == 401
        fake.api_key = NEW
        resp, _ = await send(kind, None)
        assert resp.status == 200
        assert all(r.path.endswith(("/models", "/api/tags")) for r in fake.requests)
    finally:
        await fake.close()


async def test_a_missing_credential_sends_none(setup: Setup) -> None:
    fake = await FakeOpenAI(api_key=OLD).start()
    try:
        kind = await setup.kind(OpenAIUpstream, fake.url)
        resp, _ = await send(kind, exchange("chat", chat("fake-model")))
        assert resp.status == 401
        assert "Authorization" not in fake.requests[0].headers
    finally:
        await fake.close()


# -- through the gateway -----------------------------------------------------------------------


async def test_grace_through_the_gateway_with_the_openai_sdk(
    tmp_path: Path,
    make_fake_openai: FakeFactory,
    llm_config: Callable[..., dict[str, Any]],
    llm_gateway: GatewayFactory,
) -> None:
    """The daemon, a provider made through the admin API, the official SDK: rotated with a
    grace while the provider still has only the old key, the SDK's request is answered (the
    fake saw the new key refused, then the old one); once the grace is over, 502
    upstream_auth_failed, and neither key in the answer or the daemon's log."""
    key_file = tmp_path / "llm.key"
    generate_key_file(key_file)
    fake = await make_fake_openai(api_key=OLD)
    llm = {"models": {}, "secrets_key_file": str(key_file)}
    gw = await llm_gateway(llm_config({}, llm))
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    provider = {
        "id": "prov-e2e",
        "kind": "openai",
        "base_url": fake.url,
        "api_key": OLD,
        "models": {"gpt-live": {"model": "gpt-4o-mini"}},
    }
    client = gw.client()
    async with aiohttp.ClientSession(headers=auth) as admin:
        async with admin.post(gw.admin_url + "/_admin/llm/providers", json=provider) as r:
            assert r.status == 201, await r.text()
        assert await chat_text(client, "gpt-live", stream=False)
        rotate = gw.admin_url + "/_admin/llm/providers/prov-e2e/rotate-credentials"
        async with admin.post(rotate, json={"api_key": NEW, "grace": "2s"}) as r:
            assert r.status == 200, await r.text()
        rotated = time.monotonic()
        fake.requests.clear()
        assert await chat_text(client, "gpt-live", stream=True)
        assert [r.headers["Authorization"] for r in fake.requests] == [
            f"Bearer {NEW}",
            f"Bearer {OLD}",
        ]
        await asyncio.sleep(max(0.0, rotated + 2.2 - time.monotonic()))
        fake.requests.clear()
        with pytest.raises(openai.APIStatusError) as err:
            await chat_text(client, "gpt-live", stream=False)
    await client.close()
    assert err.value.status_code == 502
    assert err.value.code == "upstream_auth_failed"
    assert [r.headers["Authorization"] for r in fake.requests] == [f"Bearer {NEW}"]
    text = err.value.response.text + gw.logs()
    for secret in (OLD, NEW):
        assert secret not in text and secret[:12] not in text
