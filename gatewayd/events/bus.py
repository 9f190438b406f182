"""The event bus: one in-process publisher, a bounded ring buffer, bounded per-consumer queues.

``publish(type, payload, tenant=None)`` is synchronous, cheap and never blocks or raises because
of a consumer: the event is serialised once, kept in the ring buffer (for ``Last-Event-ID``
resume) and offered to every subscription whose filter matches. A subscription's queue is
bounded; when a consumer falls behind, the events it cannot take are counted into one
:class:`Gap` that it receives in their place, so a slow consumer never grows memory and never
slows the others down.

Ids are integers that grow by one per event. Numbering starts from the boot time in
microseconds, so the ids of a restarted gateway do not repeat an earlier run's, and a client
resuming across a restart is told about the gap instead of being given the wrong events.

Call ``publish`` from the event loop's thread (everything in gatewayd runs there).
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

TYPE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
GLOB_RE = re.compile(r"^[A-Za-z0-9_.\-*?]{1,128}$")


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened. ``data`` is the JSON form, made once at publish time."""

    id: int
    type: str
    time: float  # seconds since the epoch
    tenant: str | None
    payload: dict[str, Any]
    data: str = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.data)
        return data


@dataclass(slots=True)
class Gap:
    """Events a consumer did not get: it was too slow (``slow_consumer``), or it asked to
    resume from an id the ring buffer no longer holds (``resume``)."""

    reason: str
    missed: int | None = None  # how many, when known
    first_id: int | None = None
    last_id: int | None = None

    @property
    def data(self) -> str:
        return json.dumps(
            {
                "type": "gap",
                "reason": self.reason,
                "missed": self.missed,
                "first_id": self.first_id,
                "last_id": self.last_id,
            },
            separators=(",", ":"),
        )


Item = Event | Gap


def _event_json(id_: int, type_: str, at: float, tenant: str | None, payload: Any) -> str:
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    doc = {"id": id_, "type": type_, "time": stamp.replace("+00:00", "Z"), "tenant": tenant}
    doc["payload"] = payload
    return json.dumps(doc, separators=(",", ":"), default=str)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a consumer wants: type globs (``breaker.*``; none means all) and,
    optionally, one tenant (then only that tenant's events, never the untenanted ones)."""

    types: tuple[str, ...] = ()
    tenant: str | None = None
    _pattern: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, types: Iterable[str] = (), tenant: str | None = None) -> EventFilter:
        globs = tuple(t.strip() for t in types if t.strip())
        for glob in globs:
            if not GLOB_RE.match(glob):
                raise ValueError(f"invalid event type pattern {glob!r}")
        pattern = (
            re.compile("|".join(fnmatch.translate(g) for g in globs))
            if globs and "*" not in globs
            else None
        )
        return cls(globs, tenant, pattern)

    def matches(self, event: Event) -> bool:
        if self.tenant is not None and event.tenant != self.tenant:
            return False
        return self._pattern is None or self._pattern.match(event.type) is not None


class Subscription:
    """A consumer's bounded queue. Iterate it (``async for item in sub``) or ``await get()``;
    items are :class:`Event` or :class:`Gap`. Close it (or use ``async with``) when done."""

    __slots__ = ("_bus", "_items", "_wake", "closed", "filter", "limit", "stream")

    def __init__(self, bus: EventBus, filter: EventFilter, limit: int, stream: bool) -> None:
        self._bus = bus
        self.filter = filter
        self.limit = limit
        self.stream = stream  # an SSE client's: ended at shutdown
        self._items: deque[Item] = deque()
        self._wake = asyncio.Event()
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, event: Event) -> bool:
        """Queue ``event``, or count it into a gap when the queue is full. Never blocks."""
        items = self._items
        if len(items) < self.limit:
            items.append(event)
            self._wake.set()
            return True
        last = items[-1]
        if isinstance(last, Gap) and last.reason == "slow_consumer":
            last.missed = (last.missed or 0) + 1
            last.last_id = event.id
        else:  # the one slot over the limit: the gap that stands for everything dropped
            items.append(Gap("slow_consumer", 1, event.id, event.id))
        self._wake.set()
        return False

    def _put(self, item: Item) -> None:
        self._items.append(item)
        self._wake.set()

    def get_nowait(self) -> Item | None:
        if self._items:
            return self._items.popleft()
        self._wake.clear()
        return None

    async def get(self, timeout: float | None = None) -> Item | None:
        """The next item; ``None`` after ``timeout`` seconds without one, or once closed."""
        while True:
            item = self.get_nowait()
            if item is not None or self.closed:
                return item
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                return None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._bus._unsubscribe(self)
            self._wake.set()

    def __aiter__(self) -> AsyncIterator[Item]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Item]:
        while True:
            item = await self.get()
            if item is None:
                return
            yield item

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """The process-wide event bus (``services.events``)."""

    def __init__(
        self,
        buffer: int = 1024,
        queue: int = 1000,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._ring: deque[Event] = deque(maxlen=buffer)
        self.queue = queue
        self._subs: set[Subscription] = set()
        self._next_id = time.time_ns() // 1000
        self._published: Any = None
        self._dropped: Any = None
        self._consumers: Any = None
        if registry is not None:
            self._published = Counter(
                "gatewayd_events_published_total",
                "Events published on the event bus",
                registry=registry,
            )
            self._dropped = Counter(
                "gatewayd_events_dropped_total",
                "Events a slow consumer missed (delivered to it as a gap)",
                registry=registry,
            )
            self._consumers = Gauge(
                "gatewayd_events_consumers", "Open event-stream consumers", registry=registry
            )

    @property
    def last_id(self) -> int:
        return self._next_id - 1

    def publish(self, type: str, payload: dict[str, Any], tenant: str | None = None) -> Event:
        """Publish an event. Synchronous; never blocks on, or fails because of, a consumer."""
        id_ = self._next_id
        self._next_id += 1
        at = time.time()
        data = _event_json(id_, type, at, tenant, payload)
        event = Event(id_, type, at, tenant, payload, data)
        self._ring.append(event)
        dropped = 0
        for sub in self._subs:
            if sub.filter.matches(event) and not sub.offer(event):
                dropped += 1
        if self._published is not None:
            self._published.inc()
            if dropped:
                self._dropped.inc(dropped)
        return event

    def subscribe(
        self,
        filter: EventFilter | None = None,
        last_event_id: int | None = None,
        queue: int | None = None,
        stream: bool = False,
    ) -> Subscription:
        """A new consumer. With ``last_event_id`` it first gets the matching events after that
        id from the ring buffer, exactly, or a ``resume`` gap when the buffer no longer holds
        them all (then everything the buffer still has). ``stream`` marks an SSE client's
        subscription (ended by :meth:`end_streams` at shutdown)."""
        sub = Subscription(self, filter or EventFilter(), queue or self.queue, stream)
        if last_event_id is not None:
            self._replay(sub, last_event_id)
        self._subs.add(sub)
        if self._consumers is not None:
            self._consumers.inc()
        return sub

    def _replay(self, sub: Subscription, after: int) -> None:
        ring = self._ring
        oldest = ring[0].id if ring else self._next_id
        if after > self.last_id or after < oldest - 1:
            # Unknown id (another run of the gateway) or fallen out of the buffer.
            first = after + 1 if after < oldest else None
            last = oldest - 1 if after < oldest else None
            sub._put(Gap("resume", None, first, last))
            after = oldest - 1
        start = after - oldest + 1  # ids are consecutive, so the position is arithmetic
        for i in range(max(start, 0), len(ring)):
            event = ring[i]
            if sub.filter.matches(event):
                sub.offer(event)

    def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.discard(sub)
            if self._consumers is not None:
                self._consumers.dec()

    @property
    def consumers(self) -> int:
        return len(self._subs)

    def sse(
        self,
        *,
        types: str | None = None,
        tenant: str | None = None,
        last_event_id: str | None = None,
        heartbeat: float = 15.0,
        queue: int | None = None,
    ) -> AsyncIterator[bytes]:
        """A Server-Sent Events body (bytes chunks) for one consumer; see ``events.sse``.
        Raises ``ValueError`` (before anything is sent) for a bad ``types`` or id."""
        from gatewayd.events.sse import sse_stream

        return sse_stream(self, types, tenant, last_event_id, heartbeat, queue)

    def end_streams(self) -> None:
        """End the SSE clients' subscriptions (their streams finish); publishing goes on."""
        for sub in list(self._subs):
            if sub.stream:
                sub.close()

    async def close(self) -> None:
        for sub in list(self._subs):
            sub.close()
