"""The streaming relay: usage stripping, error events, ending exactly once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from gatewayd_llm.exchange import StreamFailed
from gatewayd_llm.stream import StreamRelay, count_tokens, peek, strip_usage

CHUNK = b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n'
DONE = b"data: [DONE]\n\n"


class Source:
    """A kind's body: items, then an exception or the end; records aclose."""

    def __init__(self, items: list[bytes], fail: BaseException | None = None) -> None:
        self.items = list(items)
        self.fail = fail
        self.closed = False

    def __aiter__(self) -> Source:
        return self

    async def __anext__(self) -> bytes:
        if self.items:
            return self.items.pop(0)
        if self.fail is not None:
            raise self.fail
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        self.closed = True


def relay(source: AsyncIterator[bytes], first: bytes, usage: bool) -> tuple[StreamRelay, list]:
    ends: list[Any] = []
    r = StreamRelay(
        first, source, include_usage=usage, request_id="rid", on_end=lambda *a: ends.append(a)
    )
    return r, ends


async def test_usage_is_stripped_unless_asked_and_the_end_is_reported_once() -> None:
    src = Source([CHUNK + USAGE, DONE])
    r, ends = relay(src, CHUNK, usage=False)
    out = b"".join([item async for item in r])
    assert b"usage" not in out and out.endswith(DONE) and out.count(b'"hi"') == 2
    await r.aclose()
    assert ends == [("complete", None, 2)] and src.closed
    src = Source([USAGE + DONE])
    r, ends = relay(src, CHUNK, usage=True)
    assert b"".join([item async for item in r]) == CHUNK + USAGE + DONE


async def test_a_failure_ends_with_an_error_event_and_no_done() -> None:
    r, ends = relay(Source([CHUNK], StreamFailed("stall", "the provider stopped")), CHUNK, True)
    items = [item async for item in r]
    last = json.loads(items[-1][6:])
    assert last["error"]["code"] == "stream_stall" and last["error"]["request_id"] == "rid"
    assert b"[DONE]" not in b"".join(items) and ends == [("failed", "stall", 2)]
    r, ends = relay(Source([], StopAsyncIteration()), CHUNK, True)
    items = [item async for item in r]  # a body that ends without [DONE] has failed
    assert b'"stream_disconnect"' in items[-1] and ends[0][0] == "failed"


async def test_a_cancelled_reader_or_an_early_close_is_a_cancel() -> None:
    src = Source([])
    r, ends = relay(src, CHUNK, True)
    assert await r.__anext__() == CHUNK
    task = asyncio.ensure_future(r.__anext__())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await r.aclose()
    await r.aclose()
    assert ends == [("cancelled", None, 1)] and src.closed


async def test_peek_and_helpers() -> None:
    assert (await peek(Source([CHUNK]))).first == CHUNK
    failed = await peek(Source([], StreamFailed("malformed", "bad")))
    assert failed.first is None and isinstance(failed.error, StreamFailed)
    assert strip_usage(USAGE[:-2]) is None
    assert strip_usage(CHUNK[:-2]) == b'data: {"choices":[{"delta":{"content":"hi"}}]}'
    assert count_tokens(b'{"delta": {"role": "assistant", "content": ""}}') == 0
    assert count_tokens(CHUNK + CHUNK) == 2


def test_count_tokens_estimates_large_events_from_their_text() -> None:
    """A process kind's chunk is a whole read of the command's output: one event of 4,000
    characters is about 1,000 tokens, not one."""
    text = "word " * 800
    event = (
        b"data: "
        + json.dumps(
            {
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": text}}],
            }
        ).encode()
        + b"\n\n"
    )
    assert count_tokens(event) == len(text) // 4
    legacy = b"data: " + json.dumps({"choices": [{"index": 0, "text": text}]}).encode() + b"\n\n"
    assert count_tokens(legacy + legacy) == 2 * (len(text) // 4)


def test_usage_null_is_stripped_in_any_spelling() -> None:
    spaced = b'data: {"choices": [{"delta": {"content": "a"}}], "usage": null}'
    assert strip_usage(spaced) == b'data: {"choices": [{"delta": {"content": "a"}}]}'
    middle = b'data: {"usage": null, "choices": []}'
    assert strip_usage(middle) == b'data: {"choices":[]}'
    inner = b'data: {"choices":[{"delta":{"content":"\\"usage\\":null"}}],"usage":null}'
    assert json.loads(strip_usage(inner)[6:]) == {  # type: ignore[index]
        "choices": [{"delta": {"content": '"usage":null'}}]
    }
