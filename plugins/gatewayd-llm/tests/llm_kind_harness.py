"""Driving a provider kind directly, as gatewayd's ManagedUpstream does: construct it with its
Config and an UpstreamContext, start it, put an Exchange in ``ctx.state`` and call ``send``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from gatewayd_llm.exchange import EXCHANGE, Exchange, Operation
from gatewayd_llm.kinds.base import HttpProvider
from multidict import CIMultiDict

from gatewayd.chain import (
    Attempt,
    Request,
    RequestContext,
    Response,
    RouteInfo,
    TimeoutsConfig,
)
from gatewayd.testing import upstream_context

# What a client sends the gateway: none of it may reach a provider.
CLIENT_HEADERS = {
    "Authorization": "Bearer gw-client-key-123",
    "X-Api-Key": "gw-client-key-123",
    "Cookie": "session=abc",
    "X-Custom": "client-only",
}


async def make_kind(cls: type[HttpProvider], **config: Any) -> HttpProvider:
    cfg = cls.Config.model_validate({"kind": cls.kind, **config})
    ctx = upstream_context("prov")
    kind = cls("prov", cfg, ctx)
    await kind.start()
    return kind


def request_ctx(exchange: Exchange | None) -> RequestContext:
    req = Request(
        "POST",
        "/v1/chat/completions",
        "",
        CIMultiDict(CLIENT_HEADERS),
        "gw.example",
        "http",
        "127.0.0.1",
        b"{}",
        2,
    )
    ctx = RequestContext(req, "rid-llm-1", RouteInfo("llm", None, ""))
    if exchange is not None:
        ctx.state[EXCHANGE] = exchange
    return ctx


def exchange(operation: Operation, body: dict[str, Any]) -> Exchange:
    return Exchange(operation, body, "client-model", "client-model#0", request_id="rid-llm-1")


async def send(
    kind: HttpProvider,
    ex: Exchange | None,
    timeouts: TimeoutsConfig | None = None,
) -> tuple[Response, Attempt]:
    target = kind.targets()[0]
    attempt = Attempt(target.id)
    ctx = request_ctx(ex)
    ctx.attempts.append(attempt)
    resp = await kind.send(
        target,
        attempt,
        ctx,
        ctx.request.path,
        CIMultiDict(CLIENT_HEADERS),
        timeouts or TimeoutsConfig(),
    )
    return resp, attempt


def body_json(resp: Response) -> Any:
    assert isinstance(resp.body, bytes), "expected a whole body"
    return json.loads(resp.body)


def sse_data(raw: bytes) -> list[Any]:
    """The data of each SSE event in ``raw`` (JSON decoded; ``"[DONE]"`` as the string)."""
    out: list[Any] = []
    assert raw.endswith(b"\n\n"), raw
    for event in raw.split(b"\n\n")[:-1]:
        assert event.startswith(b"data: "), event
        data = event[len(b"data: ") :]
        out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


async def read_events(body: Any) -> list[Any]:
    """Every event of a streamed body, in order (fails on a whole body)."""
    assert isinstance(body, AsyncIterator), "expected a streamed body"
    events: list[Any] = []
    async for chunk in body:
        events.extend(sse_data(chunk))
    return events


def content_of(events: list[Any]) -> str:
    text = ""
    for e in events:
        if isinstance(e, dict) and e.get("choices"):
            choice = e["choices"][0]
            text += choice.get("delta", {}).get("content") or choice.get("text") or ""
    return text


async def chat_text(client: Any, model: str, stream: bool, max_tokens: int = 2) -> str:
    """The answer's text through the official SDK, streamed or whole, to ``hi``."""
    messages = [{"role": "user", "content": "hi"}]
    if stream:
        chunks = await client.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
    chat = await client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens
    )
    return str(chat.choices[0].message.content or "")
