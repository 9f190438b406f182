"""The gateway's own event stream: the bus (``services.events``) and its SSE endpoint."""

from gatewayd.events.bus import Event, EventBus, EventFilter, Gap, Subscription

__all__ = ["Event", "EventBus", "EventFilter", "Gap", "Subscription"]
