"""``GET /dashboard/events/stream``: the event bus for the dashboard's events page (SSE).

The admin API's ``/_admin/events`` names each SSE event after the bus event's type, which a
browser's ``EventSource`` can only follow one name at a time; this stream sends every bus
event as an SSE event called ``bus`` (and gaps as ``gap``), with the same filters
(``?types=``, ``?tenant=``) and resume point (``Last-Event-ID``).
"""

from __future__ import annotations

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from gatewayd.admin.dashboard.tail import CHECK, gone
from gatewayd.events.bus import Event, EventBus, EventFilter


async def serve(
    request: web.Request,
    bus: EventBus,
    filter_: EventFilter,
    after: int | None,
    heartbeat: float,
) -> web.StreamResponse:
    resp = EventSourceResponse(ping_interval=heartbeat, headers={"Cache-Control": "no-store"})
    sub = bus.subscribe(filter_, after, stream=True)
    try:
        await resp.prepare(request)
        while resp.is_connected() and not gone(request):
            item = await sub.get(CHECK)
            if item is None:
                if sub.closed:
                    break
                continue
            if isinstance(item, Event):
                await resp.send(item.data, id=str(item.id), event="bus")
            else:
                await resp.send(item.data, event="gap")
    except (ConnectionError, RuntimeError):
        pass  # the client went away
    finally:
        sub.close()
        if resp.prepared and resp.is_connected():
            resp.stop_streaming()
    return resp
