"""The streaming relay: what the client reads of a streamed answer, once the plugin committed
to a deployment (it peeked the provider's first item: see :func:`peek`).

- Each item goes on as soon as the kind yields it (whole SSE events, never re-buffered).
- The usage chunk (``choices: []`` with ``usage``) and the ``"usage": null`` of the other
  chunks are stripped when the client did not ask for them (the gateway always asks).
- A stream that fails after its first byte ends with an OpenAI-shaped error event
  (``data: {"error": {...}}``) and no ``[DONE]``: never as a clean end.
- The relay ends exactly once, and says how (``on_end``): ``complete`` (``[DONE]`` seen),
  ``failed`` (with the reason) or ``cancelled`` (the client went away: the task reading it was
  cancelled, or it was closed before the end). Either way the kind's iterator is closed, so
  the provider sees its connection go at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from gatewayd.chain import UpstreamError
from gatewayd_llm.exchange import StreamFailed
from gatewayd_llm.tokens import text_tokens
from gatewayd_llm.wire import DONE, SseDecoder, error_object, sse_event

__all__ = ["Ending", "Peeked", "StreamRelay", "count_tokens", "failure_reason", "peek"]

Ending = Literal["complete", "failed", "cancelled"]
EndCallback = Callable[[Ending, str | None, int], None]


def failure_reason(exc: BaseException) -> str:
    """A short, bounded reason for metrics and events: stall, disconnect, malformed, provider,
    timeout, connect, error."""
    if isinstance(exc, StreamFailed):
        return exc.kind
    if isinstance(exc, UpstreamError):
        if exc.status == 504:
            return "timeout"
        return "connect" if exc.code == "upstream_unreachable" else "error"
    if isinstance(exc, TimeoutError):
        return "stall"
    return "malformed" if isinstance(exc, ValueError) else "error"


class Peeked:
    """The first item of a stream, or why there was none."""

    __slots__ = ("error", "first")

    def __init__(self, first: bytes | None, error: BaseException | None) -> None:
        self.first = first
        self.error = error


async def peek(body: AsyncIterator[bytes]) -> Peeked:
    """Read the first item of a kind's stream. A failure (or an empty stream) is returned, not
    raised: the caller closes the body and tries the next deployment. A cancellation (the
    client went away) is raised as it is."""
    try:
        first = await body.__anext__()
    except StopAsyncIteration:
        return Peeked(None, StreamFailed("disconnect", "the provider's stream was empty"))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return Peeked(None, exc)
    return Peeked(first, None)


# An event longer than this per content field carries more than a token or two (a process
# kind's chunk is one read of the command's output, up to 4 KiB): its text is estimated.
LARGE_EVENT = 512


def count_tokens(item: bytes) -> int:
    """The estimated completion tokens of an item, for a stream whose provider never says:
    about one per content-bearing event (providers send a token or a few per event), and for
    events much longer than that, an estimate from their text (four characters a token)."""
    n = item.count(b'"content":') + item.count(b'"text":')
    empty = item.count(b'"content":""') + item.count(b'"text":""')
    if b'": ""' in item:  # JSON written with spaces after the colons
        empty += item.count(b'"content": ""') + item.count(b'"text": ""')
    events = max(0, n - empty - item.count(b'"content":null') - item.count(b'"content": null'))
    if events and len(item) > LARGE_EVENT * events:
        return max(events, text_estimate(item))
    return events


def text_estimate(item: bytes) -> int:
    """Tokens of the content deltas (chat) and texts (completions) of the SSE events in
    ``item``, from their characters; an event that is not JSON counts nothing."""
    total = 0
    try:
        events = list(SseDecoder().feed(item))
    except ValueError:  # an oversized event: the plugin's relay reports it, not the estimate
        return 0
    for data in events:
        try:
            obj = json.loads(data)
        except ValueError:
            continue
        choices = obj.get("choices") if isinstance(obj, dict) else None
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                total += text_tokens(delta["content"])
            elif isinstance(choice.get("text"), str):
                total += text_tokens(choice["text"])
    return total


class StreamRelay:
    """The body of a streamed answer (an async iterator of bytes with ``aclose``)."""

    __slots__ = (
        "closed",
        "complete",
        "ended",
        "first",
        "include_usage",
        "on_end",
        "request_id",
        "tokens",
        "upstream",
        "waited",
    )

    def __init__(
        self,
        first: bytes,
        upstream: AsyncIterator[bytes],
        *,
        include_usage: bool,
        request_id: str,
        on_end: EndCallback,
    ) -> None:
        self.first: bytes | None = first
        self.upstream = upstream
        self.include_usage = include_usage
        self.request_id = request_id
        self.on_end = on_end
        self.complete = False  # [DONE] relayed
        self.ended = False
        self.closed = False
        self.tokens = 0  # content events relayed (the estimate of completion tokens)
        self.waited = 0.0  # seconds spent waiting for the provider's next item

    def __aiter__(self) -> StreamRelay:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self.ended:
                raise StopAsyncIteration
            if self.complete:
                self._end("complete")
                raise StopAsyncIteration
            item = self.first
            if item is not None:
                self.first = None
            else:
                waiting = time.monotonic()
                try:
                    item = await self.upstream.__anext__()
                except StopAsyncIteration:
                    return self._fail(
                        StreamFailed("disconnect", "the provider's stream ended before [DONE]")
                    )
                except asyncio.CancelledError:
                    self._end("cancelled")
                    raise
                except Exception as exc:
                    return self._fail(exc)
                finally:
                    self.waited += time.monotonic() - waiting
            out = self.filter(item)
            if out:
                return out

    def filter(self, item: bytes) -> bytes:
        if DONE in item:
            self.complete = True
        self.tokens += count_tokens(item)
        if self.include_usage or b'"usage"' not in item:
            return item
        kept: list[bytes] = []
        for event in item.split(b"\n\n"):
            if not event:
                continue
            if b'"usage"' in event and event.startswith(b"data:"):
                stripped = strip_usage(event)
                if stripped is None:
                    continue
                event = stripped
            kept.append(event + b"\n\n")
        return b"".join(kept)

    def _fail(self, exc: BaseException) -> bytes:
        reason = failure_reason(exc)
        self._end("failed", reason)
        if isinstance(exc, StreamFailed | UpstreamError):
            message, status = exc.message, exc.status
        else:
            message, status = "the provider's stream failed", 502
        code = "provider_error" if reason == "provider" else f"stream_{reason}"
        return sse_event(error_object(message, status, code, None, self.request_id))

    def _end(self, how: Ending, reason: str | None = None) -> None:
        if not self.ended:
            self.ended = True
            self.on_end(how, reason, self.tokens)

    async def aclose(self) -> None:
        """The client is done with the body: at its end, or gone (then the stream counts as
        cancelled). Closes the kind's iterator (once)."""
        self._end("complete" if self.complete else "cancelled")
        if self.closed:
            return
        self.closed = True
        aclose = getattr(self.upstream, "aclose", None)
        if aclose is not None:
            await aclose()


def strip_usage(event: bytes) -> bytes | None:
    """One ``data:`` event without usage: None for the usage chunk itself, the chunk without
    its ``"usage": null`` otherwise (unchanged when it is not JSON: the kind checked it)."""
    for tail in (b',"usage":null}', b', "usage": null}'):  # as OpenAI and Python write it
        if event.endswith(tail):  # (a string's quotes are escaped: this is the key itself)
            return event[: -len(tail)] + b"}"
    try:
        obj: Any = json.loads(event[5:])
    except ValueError:
        return event
    if not isinstance(obj, dict) or "usage" not in obj:
        return event
    if obj["usage"] is not None and not obj.get("choices"):
        return None
    del obj["usage"]
    return sse_event(obj)[:-2]
