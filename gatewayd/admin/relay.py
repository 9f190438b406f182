"""Admin API for the relay (behind admin tokens).

- ``POST /_admin/relay/leases/{lease}/events`` ``{type, payload, correlation_id?}``: push an event
  to every connection of the lease, in order. 202 with its id and seq; 400 for a type not in
  ``relay.event_types``; 413 for a payload over ``relay.max_event_bytes`` or an event whose
  frame would be over ``relay.max_frame`` (a peer would have to refuse it); 404 when no peer
  holds the lease (counted as a failed delivery).
- ``GET /_admin/relay/stats``: per lease, per peer identity (``<key id>/<name>``, kept across
  reconnects) and per connection: connected_at, last_heartbeat, in-flight streams, events
  sent/acked/failed/queued, last failure time and reason.
"""

from __future__ import annotations

import json
import uuid

from aiohttp import web

from gatewayd.admin.app import DAEMON
from gatewayd.admin.auth import admin_error, admin_route
from gatewayd.proxy.headers import valid_request_id
from gatewayd.relay.registry import EventTooLarge, RelayRegistry


def _registry(request: web.Request) -> RelayRegistry | None:
    daemon = request.app[DAEMON]
    return daemon.services.relay if daemon.services is not None else None


@admin_route
async def push_event(request: web.Request) -> web.StreamResponse:
    daemon = request.app[DAEMON]
    registry = _registry(request)
    if registry is None or daemon.config is None:
        return admin_error(503, "relay_unavailable", "the relay is not running")
    config = daemon.config.relay
    lease = request.match_info["lease"]
    limit = config.max_event_bytes
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        return admin_error(413, "event_too_large", f"event payload over {limit} bytes")
    try:
        data = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        return admin_error(400, "bad_json", "body is not JSON")
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        return admin_error(400, "bad_event", 'expected {"type": ..., "payload": ...}')
    type_ = data["type"]
    if type_ not in config.event_types:
        allowed = ", ".join(config.event_types) or "none configured"
        return admin_error(400, "bad_event_type", f"unknown event type (allowed: {allowed})")
    payload = data.get("payload")
    size = len(json.dumps(payload, separators=(",", ":")))
    if size > limit:
        return admin_error(
            413,
            "event_too_large",
            f"event payload is {size} bytes, over relay.max_event_bytes ({limit} bytes)",
        )
    cid = data.get("correlation_id") or request.headers.get("X-Request-ID")
    if not isinstance(cid, str) or not valid_request_id(cid):
        cid = uuid.uuid4().hex
    try:
        result = registry.push_event(lease, type_, payload, cid, config.max_frame)
    except EventTooLarge as exc:
        return admin_error(413, "event_too_large", str(exc))
    if result is None:
        return admin_error(404, "no_peer", f"no peer holds relay lease '{lease}'")
    return web.json_response({"lease": lease, "correlation_id": cid, **result}, status=202)


@admin_route
async def stats(request: web.Request) -> web.StreamResponse:
    registry = _registry(request)
    if registry is None:
        return admin_error(503, "relay_unavailable", "the relay is not running")
    return web.json_response(registry.stats())


def install(app: web.Application) -> None:
    app.router.add_post("/_admin/relay/leases/{lease}/events", push_event)
    app.router.add_get("/_admin/relay/stats", stats)
