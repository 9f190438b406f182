"""The event stream as Server-Sent Events, for the admin endpoint and the ``events`` plugin.

Wire format (one event)::

    id: 1718000000000042
    event: breaker.opened
    data: {"id":1718000000000042,"type":"breaker.opened","time":"...Z","tenant":"acme",...}

A gap has ``event: gap`` and no ``id`` (so a client's Last-Event-ID stays on the last event it
really got). Idle streams get a ``: ping`` comment every heartbeat interval.

Query parameters: ``types=breaker.*,config.*`` (globs, comma-separated) and ``tenant=acme``;
a tenant-scoped caller always gets its own tenant, whatever it asks for. Resume with the
``Last-Event-ID`` header (or ``?last_event_id=`` for clients that cannot set headers).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from gatewayd.events.bus import Event, EventBus, EventFilter, Item

if TYPE_CHECKING:
    from gatewayd.events.bus import Subscription

SEP = "\n"
BATCH = 64 * 1024  # events ready at once are written together, up to this many bytes
HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def parse_filter(types: str | None, tenant: str | None) -> EventFilter:
    """The filter for ``?types=`` and a tenant; ``ValueError`` with a clear message if bad."""
    globs = (types or "").split(",") if types else ()
    if tenant is not None and not tenant:
        tenant = None
    return EventFilter.of(globs, tenant)


def parse_last_event_id(value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not value.isdigit() or len(value) > 20:
        raise ValueError("Last-Event-ID must be an event id (a non-negative integer)")
    return int(value)


def request_params(
    query: Mapping[str, str], headers: Mapping[str, str]
) -> tuple[str | None, str | None, str | None]:
    """``(types, tenant, last_event_id)`` from a request's query and headers."""
    last = headers.get("Last-Event-ID") or query.get("last_event_id")
    return query.get("types"), query.get("tenant"), last


def encode(item: Item) -> str:
    if isinstance(item, Event):
        return f"id: {item.id}{SEP}event: {item.type}{SEP}data: {item.data}{SEP}{SEP}"
    return f"event: gap{SEP}data: {item.data}{SEP}{SEP}"


def drain_ready(sub: Subscription, first: Item) -> str:
    """``first`` and whatever else is already queued, encoded, up to about BATCH bytes."""
    out = [encode(first)]
    size = len(out[0])
    while size < BATCH:
        item = sub.get_nowait()
        if item is None:
            break
        text = encode(item)
        out.append(text)
        size += len(text)
    return "".join(out)


def sse_stream(
    bus: EventBus,
    types: str | None,
    tenant: str | None,
    last_event_id: str | None,
    heartbeat: float,
    queue: int | None = None,
) -> AsyncIterator[bytes]:
    """A response body for one consumer. Validates first (``ValueError``); subscribes only
    when the body is first read, and unsubscribes when it is closed."""
    filter_ = parse_filter(types, tenant)
    after = parse_last_event_id(last_event_id)
    return _stream(bus, filter_, after, heartbeat, queue)


async def _stream(
    bus: EventBus, filter_: EventFilter, after: int | None, heartbeat: float, queue: int | None
) -> AsyncIterator[bytes]:
    sub = bus.subscribe(filter_, after, queue, stream=True)
    try:
        yield f": connected{SEP}{SEP}".encode()  # sends the headers now; EventSource opens
        while True:
            item = await sub.get(heartbeat)
            if item is None:
                if sub.closed:
                    return
                yield f": ping{SEP}{SEP}".encode()
                continue
            yield drain_ready(sub, item).encode()
    finally:
        sub.close()


def parse_request(
    request: web.BaseRequest, tenant: str | None = None
) -> tuple[EventFilter, int | None]:
    """The filter and resume point a request asks for; ``ValueError`` if malformed.
    ``tenant`` scopes the caller: its ``?tenant=`` is then ignored."""
    types, asked_tenant, last = request_params(request.query, request.headers)
    filter_ = parse_filter(types, tenant if tenant is not None else asked_tenant)
    return filter_, parse_last_event_id(last)


async def serve(
    request: web.BaseRequest,
    bus: EventBus,
    filter_: EventFilter,
    after: int | None,
    *,
    heartbeat: float = 15.0,
    queue: int | None = None,
) -> web.StreamResponse:
    """Answer ``request`` with the event stream through aiohttp-sse (the admin endpoint)."""
    resp = EventSourceResponse(sep=SEP, ping_interval=heartbeat, headers=HEADERS)
    sub = bus.subscribe(filter_, after, queue, stream=True)
    try:
        await resp.prepare(request)
        await resp.write(f": connected{SEP}{SEP}".encode())
        while resp.is_connected():
            item = await sub.get(heartbeat)
            if item is None:
                if sub.closed:
                    break
                continue  # aiohttp-sse's own task sends the ping comments
            await resp.write(drain_ready(sub, item).encode())
    except (ConnectionError, RuntimeError):
        pass  # the client went away
    finally:
        sub.close()
        if resp.prepared and resp.is_connected():
            resp.stop_streaming()
    return resp
