"""gatewayd_llm.metrics: the GenAI semconv instruments and the gateway's own, on the harness's
real metrics (a Prometheus registry of its own), read back as Prometheus exposes them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from gatewayd_llm.metrics import LlmMetrics
from gatewayd_llm.usage import UsageRecord
from prometheus_client import generate_latest

from gatewayd.testing import HarnessServices


def rec(**changes: Any) -> UsageRecord:
    fields: dict[str, Any] = {
        "request_id": "r1",
        "time": 1_700_000_000.0,
        "route": "llm",
        "model": "smart",
        "deployment": "smart#0",
        "upstream": "openai-main",
        "provider_model": "gpt-4o",
        "key_id": "k1",
        "tenant": "acme",
        "prompt_tokens": 812,
        "completion_tokens": 40,
        "source": "provider",
        "cost": 0.0125,
        "status": 200,
        "stream": True,
        "cancelled": False,
        "duration_ms": 1500.0,
        "ttft_ms": 120.0,
        "fallbacks": 0,
    }
    fields.update(changes)
    return UsageRecord(**fields)


@pytest.fixture
async def harness() -> AsyncIterator[HarnessServices]:
    services = HarnessServices()
    yield services
    await services.close()


def sample(h: HarnessServices, name: str, **labels: str) -> float | None:
    return h.registry.get_sample_value(name, labels)


GENAI = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai"}


def test_a_usage_record_lands_in_every_instrument(harness: HarnessServices) -> None:
    m = LlmMetrics(harness.metrics, models=["smart"])
    m.record(rec(), "openai", 0.0004)
    model = {**GENAI, "gen_ai_request_model": "smart"}
    usage = "gen_ai_client_token_usage"
    assert sample(harness, f"{usage}_sum", **model, gen_ai_token_type="input") == 812
    assert sample(harness, f"{usage}_sum", **model, gen_ai_token_type="output") == 40
    assert sample(harness, f"{usage}_bucket", **model, gen_ai_token_type="input", le="256.0") == 0
    assert sample(harness, f"{usage}_bucket", **model, gen_ai_token_type="input", le="1024.0") == 1
    duration = "gen_ai_client_operation_duration_seconds"
    assert sample(harness, f"{duration}_sum", **model, error_type="") == 1.5
    assert sample(harness, "gen_ai_server_time_to_first_token_seconds_sum", **model) == 0.12
    assert sample(harness, "gatewayd_llm_overhead_seconds_count", model="smart") == 1
    assert sample(harness, "gatewayd_llm_overhead_seconds_sum", model="smart") == 0.0004
    tokens = "gatewayd_llm_tokens_total"
    labels = {"model": "smart", "provider": "openai", "tenant": "acme"}
    assert sample(harness, tokens, **labels, type="input") == 812
    assert sample(harness, tokens, **labels, type="output") == 40
    assert sample(harness, "gatewayd_llm_cost_total", model="smart", tenant="acme") == 0.0125
    text = generate_latest(harness.registry).decode()
    assert "# TYPE gen_ai_client_token_usage histogram" in text
    assert "# TYPE gen_ai_server_time_to_first_token_seconds histogram" in text


def test_errors_cancellations_and_unstreamed_requests(harness: HarnessServices) -> None:
    m = LlmMetrics(harness.metrics)
    m.record(rec(status=502, stream=False, prompt_tokens=0, completion_tokens=0), "openai", 0.0)
    m.record(rec(cancelled=True, status=499), "anthropic", 0.001)
    m.record(rec(model="embed", completion_tokens=0), "openai", 0.0, operation="embeddings")
    duration = "gen_ai_client_operation_duration_seconds_count"
    smart = {**GENAI, "gen_ai_request_model": "smart"}
    assert sample(harness, duration, **smart, error_type="502") == 1
    claude = {**smart, "gen_ai_provider_name": "anthropic"}
    assert sample(harness, duration, **claude, error_type="cancelled") == 1
    ttft = "gen_ai_server_time_to_first_token_seconds_count"
    assert sample(harness, ttft, **smart) is None  # not streamed: no time to first token
    embed = {**GENAI, "gen_ai_operation_name": "embeddings", "gen_ai_request_model": "embed"}
    usage = "gen_ai_client_token_usage_count"
    assert sample(harness, usage, **embed, gen_ai_token_type="input") == 1
    assert sample(harness, usage, **embed, gen_ai_token_type="output") is None
    labels = {"model": "smart", "provider": "openai", "tenant": "acme"}
    assert sample(harness, "gatewayd_llm_tokens_total", **labels, type="input") is None
    m.fallback("smart", "429")
    m.fallback("smart", "429")
    m.error("smart", "timeout")
    assert sample(harness, "gatewayd_llm_fallbacks_total", model="smart", reason="429") == 2
    assert sample(harness, "gatewayd_llm_errors_total", model="smart", kind="timeout") == 1


def test_the_same_collectors_after_a_reload(harness: HarnessServices) -> None:
    kept: dict[str, Any] = {}

    def keep(key: str, factory: Any) -> Any:
        return kept.setdefault(key, factory())

    first = LlmMetrics(harness.metrics, keep=keep, max_tenants=1)
    first.record(rec(), "openai", 0.0)
    first.error("smart", "timeout")
    second = LlmMetrics(harness.metrics, keep=keep, max_tenants=1)  # the reloaded plugin's
    assert second.token_usage is first.token_usage and second.errors is first.errors
    second.record(rec(), "openai", 0.0)
    second.record(rec(tenant="globex"), "openai", 0.0)  # the bound holds across the reload
    second.error("smart", "timeout")
    labels = {"model": "smart", "provider": "openai", "type": "input"}
    assert sample(harness, "gatewayd_llm_tokens_total", **labels, tenant="acme") == 2 * 812
    assert sample(harness, "gatewayd_llm_tokens_total", **labels, tenant="other") == 812
    assert sample(harness, "gatewayd_llm_errors_total", model="smart", kind="timeout") == 2


def test_the_tenant_set_is_the_processs_whatever_the_config(harness: HarnessServices) -> None:
    """With the state stores, a reload that changes the config labels no new tenants."""
    first = LlmMetrics(harness.metrics, stores=harness.stores, max_tenants=2)
    first.record(rec(tenant="a"), "openai", 0.0)
    first.record(rec(tenant="b"), "openai", 0.0)
    changed = LlmMetrics(
        harness.metrics, models=["smart", "new"], stores=harness.stores, max_tenants=2
    )
    changed.record(rec(tenant="c"), "openai", 0.0)
    assert (changed.tenant("a"), changed.tenant("c")) == ("a", "other")
    labels = {"model": "smart", "provider": "openai", "type": "input"}
    assert sample(harness, "gatewayd_llm_tokens_total", **labels, tenant="c") is None
    assert sample(harness, "gatewayd_llm_tokens_total", **labels, tenant="other") == 812


def test_labels_stay_bounded(harness: HarnessServices) -> None:
    m = LlmMetrics(harness.metrics, models=["smart", "local"], max_tenants=3)
    for i in range(500):
        m.record(rec(tenant=f"tenant-{i}", model=f"model-{i}"), "openai", 0.0)
    m.record(rec(tenant=None), "openai", 0.0)
    m.fallback("not-configured", "timeout")
    tenants = set()
    models = set()
    for family in harness.registry.collect():
        for s in family.samples:
            if "tenant" in s.labels:
                tenants.add(s.labels["tenant"])
            if family.name.startswith(("gen_ai", "gatewayd_llm")):
                models.add(s.labels.get("model") or s.labels.get("gen_ai_request_model"))
    assert tenants == {"tenant-0", "tenant-1", "tenant-2", "other", "none"}
    assert models == {"other", "smart"}
    fixed = LlmMetrics(harness.metrics, tenants=["vip"])
    assert (fixed.tenant("vip"), fixed.tenant("acme"), fixed.tenant(None)) == (
        "vip",
        "other",
        "none",
    )


# -- through the daemon ----------------------------------------------------------------------


async def test_the_daemon_exposes_them_and_keeps_counting_after_a_reload(
    fake_openai: Any, llm_config: Any, llm_gateway: Any
) -> None:
    import copy

    from llm_testkit import openai_upstream

    upstreams = {"main": openai_upstream(fake_openai.url)}
    llm = {"models": {"m": [{"upstream": "main", "model": "fake-model"}]}}
    cfg = llm_config(upstreams, llm)
    gw = await llm_gateway(cfg, keys={"k1": "acme"})
    client = gw.client()
    messages = [{"role": "user", "content": "say three words"}]
    await client.chat.completions.create(model="m", messages=messages, max_tokens=3)
    stream = await client.chat.completions.create(
        model="m", messages=messages, max_tokens=5, stream=True
    )
    async for _ in stream:
        pass
    await fake_openai.wait_idle()
    reported = [s.usage for s in fake_openai.seen() if s.usage is not None]
    assert len(reported) == 2
    prompt = sum(u["prompt_tokens"] for u in reported)
    completion = sum(u["completion_tokens"] for u in reported)
    assert completion == 8

    async def settled(name: str, want: float, **labels: str) -> float:
        for _ in range(100):  # the record is made when the reply ends, just after the client
            if (value := await gw.metric(name, **labels)) == want:
                return value
            await asyncio.sleep(0.05)
        return await gw.metric(name, **labels)

    usage = "gen_ai_client_token_usage_sum"
    model = {"gen_ai_request_model": "m", "gen_ai_operation_name": "chat"}
    assert await settled(usage, prompt, **model, gen_ai_token_type="input") == prompt
    assert await gw.metric(usage, **model, gen_ai_token_type="output") == completion
    ttft = "gen_ai_server_time_to_first_token_seconds_count"
    assert await gw.metric(ttft, **model) == 1  # the streamed one
    duration = "gen_ai_client_operation_duration_seconds_count"
    assert await gw.metric(duration, **model, error_type="") == 2
    assert await gw.metric("gatewayd_llm_overhead_seconds_count", model="m") == 2
    tokens = "gatewayd_llm_tokens_total"
    assert await gw.metric(tokens, model="m", type="output", tenant="acme") == completion

    changed = copy.deepcopy(cfg)
    changed["routes"][0]["plugins"][-1]["llm"]["default_max_tokens"] = 7  # a new plugin
    await gw.reload(changed)
    await client.chat.completions.create(model="m", messages=messages, max_tokens=2)
    want = completion + 2
    assert await settled(tokens, want, model="m", type="output", tenant="acme") == want
    assert await gw.metric("gatewayd_llm_overhead_seconds_count", model="m") == 3
    assert "Traceback" not in gw.logs()
