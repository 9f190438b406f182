"""Fallbacks: the fault matrix {429, 500, 503, timeout, stall mid-stream, connection cut
mid-stream, malformed chunk} x {streamed, not streamed} x {before the provider's first byte,
after it}, through the real daemon, against fake providers on 127.0.0.1.

- Every fault before the first byte is recovered by the fallback model (the client sees only
  the fallback's answer, ``X-LLM-Fallbacks: 1``), counted and published as ``llm.fallback``.
- A non-streamed answer reaches the client only whole, so a fault after the provider's first
  byte is recovered too. (An HTTP status is the first byte of a reply: a non-streamed 429, 500
  or 503 "after the first byte" does not exist; those three cells are the streamed ones, where
  the provider sends an error event mid-stream.)
- No streamed answer that failed after its first byte ends cleanly: the client gets the chunks
  relayed so far, then an OpenAI-shaped error event and no ``[DONE]`` (the SDK raises).
- Each request has exactly one usage record, saying which deployment answered.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
import pytest
from fake_openai_server import Fault
from llm_testkit import LlmGateway, free_port, openai_upstream

FAULTS = ("429", "500", "503", "timeout", "stall", "cut", "malformed")
READ, TOTAL = 0.4, 1.0  # the primary's timeouts (seconds)
X = [{"role": "user", "content": "x"}]


@dataclass(frozen=True)
class Cell:
    fault: str
    stream: bool
    after: bool

    @property
    def name(self) -> str:
        mode = "stream" if self.stream else "whole"
        return f"{self.fault}-{mode}-{'after' if self.after else 'before'}"

    @property
    def recovered(self) -> bool:
        return not (self.stream and self.after)

    def provider_fault(self) -> Fault:
        fault = self._fault()
        if self.stream and self.after and fault.chunk_delay is None:
            # The role chunk goes alone, so the gateway relays it before the fault comes (a
            # fault that arrives with the first bytes, before any reached the client, is still
            # recovered by a fallback: that is not this cell).
            fault.chunk_delay = 0.05
        return fault

    def _fault(self) -> Fault:
        f, n = self.fault, (2 if self.stream else 10) if self.after else 0
        if f in ("429", "500", "503"):
            if self.after:  # streamed only: an error event after two events
                return Fault(error_after=n, code=f"provider_{f}", message=f"fake {f} mid-stream")
            return Fault(status=int(f), retry_after=1 if f == "429" else None)
        if f == "timeout":
            if not self.after:
                return Fault(delay=TOTAL + 0.5)  # no head within `total`
            # streamed: the next token comes later than `read`; whole: the body stops
            return Fault(chunk_delay=READ * 2) if self.stream else Fault(stall_after=n)
        if f == "stall":
            return Fault(stall_after=n)
        if f == "cut":
            return Fault(cut_after=n)
        return Fault(malformed_after=n)


CELLS = [
    Cell(f, stream, after)
    for f in FAULTS
    for stream in (True, False)
    for after in (False, True)
    if not (after and not stream and f in ("429", "500", "503"))
]


async def run_cell(gw: LlmGateway, cell: Cell) -> dict[str, Any]:
    """What the client saw of one request of the cell."""
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "user": cell.name,  # passed through to the provider: the fake picks the fault by it
        "stream": cell.stream,
    }
    if not cell.recovered:  # raw bytes: the end of the stream is what matters
        headers = {"Authorization": f"Bearer {gw.key}"}
        async with (
            aiohttp.ClientSession() as s,
            s.post(gw.url + "/v1/chat/completions", json=body, headers=headers) as r,
        ):
            return {"status": r.status, "raw": await r.read(), "headers": r.headers}
    async with gw.client() as client:
        if cell.stream:
            resp = await client.chat.completions.with_raw_response.create(**body)
            text = ""
            async for chunk in resp.parse():
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
        else:
            resp = await client.chat.completions.with_raw_response.create(**body)
            text = resp.parse().choices[0].message.content or ""
        return {"text": text, "headers": resp.headers}


async def test_fault_matrix(make_fake_openai, llm_config, llm_gateway) -> None:
    primary, backup = await make_fake_openai(), await make_fake_openai()
    faults = {cell.name: cell.provider_fault() for cell in CELLS}
    primary.behaviour = lambda body: faults[body["user"]]
    timeouts = {"connect": "1s", "read": f"{int(READ * 1000)}ms", "total": f"{TOTAL}s"}
    upstreams = {
        "a": openai_upstream(primary.url, timeouts=timeouts),
        "b": openai_upstream(backup.url),
    }
    llm = {
        "models": {
            "m": [{"upstream": "a", "model": "primary"}],
            "backup": [{"upstream": "b", "model": "backup"}],
        },
        "fallbacks": {"m": ["backup"]},
        "breaker": {"failures": 1000},  # every cell meets the primary
    }
    gw = await llm_gateway(llm_config(upstreams, llm))
    results = await asyncio.gather(*(run_cell(gw, cell) for cell in CELLS))

    by_user = {s.body["user"]: s for s in backup.requests}
    problems: list[str] = []
    for cell, got in zip(CELLS, results, strict=True):
        if cell.recovered:
            if got.get("text") != "t0 t1 " or got["headers"].get("x-llm-fallbacks") != "1":
                problems.append(f"{cell.name}: not recovered: {got.get('text')!r}")
            if cell.name not in by_user:
                problems.append(f"{cell.name}: the fallback was never asked")
            continue
        events = got["raw"].split(b"\n\n")
        try:
            last = json.loads(events[-2][6:]) if len(events) > 1 else {}
        except ValueError:
            last = {}
        if got["status"] != 200 or b"data: [DONE]" in got["raw"] or "error" not in last:
            problems.append(f"{cell.name}: the failed stream ended without an error: {got!r}")
        elif not any(b'"t0 "' in e for e in events) and cell.fault != "timeout":
            problems.append(f"{cell.name}: the chunks before the failure were not relayed")
        if last.get("error", {}).get("request_id") != got["headers"]["X-Request-ID"]:
            problems.append(f"{cell.name}: the error event has no request id: {last!r}")
        if cell.name in by_user:
            problems.append(f"{cell.name}: fell back after the first byte")
    assert not problems, "\n".join(problems)

    recovered = [c for c in CELLS if c.recovered]
    records = {r.request_id: r for r in await gw.usage(len(CELLS))}
    assert len(records) == len(CELLS)  # one record each, no more
    served = {s.request_id: s.body["user"] for s in primary.requests}
    assert sorted(served.values()) == sorted(c.name for c in CELLS)
    for rid, name in served.items():
        cell = next(c for c in CELLS if c.name == name)
        rec = records[rid]
        if cell.recovered:
            assert (rec.deployment, rec.fallbacks, rec.status, rec.source) == (
                "backup#0",
                1,
                200,
                "provider",
            ), (name, rec)
            assert (rec.prompt_tokens, rec.completion_tokens) == (2, 2), (name, rec)
        else:
            assert (rec.deployment, rec.fallbacks, rec.status) == ("m#0", 0, 502), (name, rec)
            assert rec.source == "estimated" and not rec.cancelled, (name, rec)

    assert await gw.metric("gatewayd_llm_fallbacks_total", model="m") == len(recovered)
    events = await gw.events("llm.fallback", len(recovered))
    assert sorted(e["payload"]["request_id"] for e in events) == sorted(
        rid for rid, name in served.items() if any(c.name == name for c in recovered)
    )
    reasons = {e["payload"]["reason"] for e in events}
    assert {"rate_limited", "5xx", "timeout", "stall", "disconnect", "malformed"} <= reasons
    assert all(e["payload"]["from"] == "m#0" and e["payload"]["to"] == "backup#0" for e in events)
    assert "sk-provider-secret" not in json.dumps(events) and gw.key not in json.dumps(events)


async def test_open_breakers_send_requests_to_the_next_deployment_across_reloads(
    make_fake_openai, llm_config, llm_gateway
) -> None:
    primary, backup = await make_fake_openai(), await make_fake_openai()
    primary.behaviour = lambda body: Fault(status=500)
    upstreams = {"a": openai_upstream(primary.url), "b": openai_upstream(backup.url)}
    llm = {
        "models": {
            "m": [
                {"upstream": "a", "model": "p"},
                {"upstream": "b", "model": "q", "weight": 0.0001},
            ]
        },
        "breaker": {"failures": 3, "open_for": "1h"},
    }
    cfg = llm_config(upstreams, llm)
    gw = await llm_gateway(cfg)
    async with gw.client() as client:
        for _ in range(3):  # the primary fails each time; the second deployment answers
            await client.chat.completions.create(model="m", messages=X)
        assert (len(primary.requests), len(backup.requests)) == (3, 3)
        await gw.reload(cfg)  # the same config: the breaker stays open
        for _ in range(3):
            reply = await client.chat.completions.with_raw_response.create(model="m", messages=X)
            assert reply.headers["x-llm-fallbacks"] == "0"  # straight to the healthy one
        assert (len(primary.requests), len(backup.requests)) == (3, 6)
        backup.behaviour = lambda body: Fault(status=503)
        with pytest.raises(openai.APIStatusError) as err:
            await client.chat.completions.create(model="m", messages=X)
        assert err.value.status_code == 503
    assert await gw.metric("gatewayd_llm_fallbacks_total", model="m", reason="5xx") == 3


async def test_no_connection_and_context_length_refusals_fall_back(
    make_fake_openai, llm_config, llm_gateway
) -> None:
    small, backup = await make_fake_openai(), await make_fake_openai()
    small.behaviour = lambda body: Fault(
        status=400, code="context_length_exceeded", message="maximum context length is 8 tokens"
    )
    upstreams = {
        "gone": openai_upstream(f"http://127.0.0.1:{free_port()}/v1"),  # nothing listens
        "small": openai_upstream(small.url),
        "b": openai_upstream(backup.url),
    }
    llm = {
        "models": {
            "m": [{"upstream": "gone", "model": "p"}],
            "s": [{"upstream": "small", "model": "q"}],
            "backup": [{"upstream": "b", "model": "r"}],
        },
        "fallbacks": {"m": ["backup"], "s": ["backup"]},
        "breaker": {"failures": 2},
    }
    gw = await llm_gateway(llm_config(upstreams, llm))
    async with gw.client() as client:
        for model in ("m", "s", "s", "s"):
            reply = await client.chat.completions.with_raw_response.create(model=model, messages=X)
            assert reply.headers["x-llm-model"] == "backup", model
    assert len(small.requests) == 3  # a context-length refusal does not open the breaker
    assert len(backup.requests) == 4
    assert await gw.metric("gatewayd_llm_fallbacks_total", model="m", reason="connect") == 1
    assert await gw.metric("gatewayd_llm_fallbacks_total", model="s", reason="context_length") == 3
    records = await gw.usage(4)
    assert [(r.model, r.deployment, r.fallbacks) for r in records] == [
        ("m", "backup#0", 1),
        ("s", "backup#0", 1),
        ("s", "backup#0", 1),
        ("s", "backup#0", 1),
    ]
