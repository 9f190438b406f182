"""``events``: answer ``GET`` with the caller's tenant's share of the gateway event stream (SSE).

Mount it on a route behind an authentication plugin, e.g. ``/v1/events`` with ``key_auth``
then ``events``. The caller sees only events of its own tenant (``principal.tenant``),
whatever ``?tenant=`` says; a caller without a tenant gets 403. ``?types=breaker.*,key.*``
narrows the stream within the route's ``types``. ``Last-Event-ID`` resumes.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from urllib.parse import parse_qsl

from multidict import CIMultiDict
from pydantic import Field

from gatewayd.chain import Duration, Plugin, PluginConfig, PluginContext, RequestContext, Response

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class EventsConfig(PluginConfig):
    types: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    heartbeat: Duration = 15.0
    queue: int = Field(1000, ge=1, le=1_000_000)


class EventsPlugin(Plugin):
    name = "events"
    Config = EventsConfig
    priority = 5  # after authentication, ACL and rate limits: it answers the request itself

    def __init__(self, config: EventsConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.allowed = ",".join(config.types)

    async def on_request(self, ctx: RequestContext) -> Response | None:
        req = ctx.request
        if req.method not in ("GET", "HEAD"):
            return ctx.error_response(
                405, "method_not_allowed", "the event stream answers GET", {"Allow": "GET, HEAD"}
            )
        bus = self.context.services.events
        if bus is None:
            return ctx.error_response(503, "events_unavailable", "the event bus is not running")
        tenant = ctx.principal.tenant if ctx.principal is not None else None
        if not tenant:
            return ctx.error_response(
                403, "tenant_required", "the event stream needs a tenant-scoped credential"
            )
        query = dict(parse_qsl(req.query_string, keep_blank_values=True))
        types = query.get("types") or self.allowed
        last = req.headers.get("Last-Event-ID") or query.get("last_event_id")
        try:
            if types != self.allowed:
                types = self._narrow(types)
            body = bus.sse(
                types=types,
                tenant=tenant,
                last_event_id=last,
                heartbeat=self.config.heartbeat,
                queue=self.config.queue,
            )
        except ValueError as exc:
            return ctx.error_response(400, "bad_request", str(exc))
        if req.method == "HEAD":
            await body.aclose()  # type: ignore[attr-defined]
            return Response(200, CIMultiDict(SSE_HEADERS), b"")
        return Response(200, CIMultiDict(SSE_HEADERS), body)

    def _narrow(self, asked: str) -> str:
        """The asked globs that fall within the route's: ``key.revoked`` and ``key.*`` are within
        ``key.*``; ``*`` is not."""
        allowed = self.config.types
        if "*" in allowed:
            return asked
        keep = [
            g.strip() for g in asked.split(",") if any(fnmatchcase(g.strip(), a) for a in allowed)
        ]
        if not keep:
            raise ValueError("none of the asked event types is available on this route")
        return ",".join(keep)
