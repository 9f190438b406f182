"""What a plugin reaches through ``PluginContext.services``, as typed protocols.

The daemon's services (``gatewayd.daemon.services.Services``) and the test harness's
(``gatewayd.testing``) both satisfy :class:`PluginServices`; mypy checks it. A plugin uses them
by attribute, with types::

    self.events = context.services.events      # EventPublisher
    self.metrics = context.services.metrics    # MetricsFactory
    keys = context.services.keys               # KeyVerifier
    stores = context.services.stores           # StateStores
    state_dir = context.services.state_dir     # pathlib.Path: the config's ``state.dir``
    upstreams = context.services.upstreams     # UpstreamDirectory: upstreams added at run time

Members are read-only properties: a plugin uses a service, it never replaces one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

__all__ = [
    "AsyncLimiter",
    "BudgetReservation",
    "CounterFamily",
    "CounterSeries",
    "EventPublisher",
    "GaugeFamily",
    "GaugeSeries",
    "HistogramFamily",
    "HistogramSeries",
    "KeyInfo",
    "KeyVerifier",
    "LimitDecision",
    "Limiter",
    "MetricsFactory",
    "PluginServices",
    "StateStores",
]


if TYPE_CHECKING:
    from gatewayd.chain.upstream import UpstreamDirectory

T = TypeVar("T")


# -- the event bus -------------------------------------------------------------------------------


class EventPublisher(Protocol):
    """The gateway's event bus. ``publish`` is synchronous, cheap, and never blocks on or fails
    because of a consumer; the event's type is ``[A-Za-z0-9_.-]{1,128}`` (else ValueError)."""

    def publish(self, type: str, payload: dict[str, Any], tenant: str | None = None) -> object:
        """Publish an event; returns the event (its ``id``, ``type``, ``time``...)."""
        ...

    def sse(
        self,
        *,
        types: str | None = None,
        tenant: str | None = None,
        last_event_id: str | None = None,
        heartbeat: float = 15.0,
        queue: int | None = None,
    ) -> AsyncIterator[bytes]:
        """A Server-Sent Events response body for one consumer of the events matching
        ``types`` (comma-separated globs) and ``tenant``; ``ValueError`` for bad arguments."""
        ...


# -- metrics -------------------------------------------------------------------------------------


class CounterSeries(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class CounterFamily(Protocol):
    """A Prometheus counter with labels: ``family.labels(route, result).inc()``."""

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> CounterSeries: ...


class GaugeSeries(Protocol):
    def set(self, value: float) -> None: ...

    def inc(self, amount: float = 1) -> None: ...

    def dec(self, amount: float = 1) -> None: ...


class GaugeFamily(Protocol):
    """A Prometheus gauge with labels: ``family.labels(upstream, target).set(2)``."""

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> GaugeSeries: ...


class HistogramSeries(Protocol):
    def observe(self, amount: float) -> None: ...


class HistogramFamily(Protocol):
    """A Prometheus histogram with labels: ``family.labels(model, "input").observe(812)``."""

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> HistogramSeries: ...


class MetricsFactory(Protocol):
    """The process's metrics. Each factory returns the same collector again for the same name
    (a reload makes new plugin instances, and they must find their metrics again); the same
    name with another type, description or labels is a ``ValueError``."""

    def counter(self, name: str, doc: str, labels: Sequence[str]) -> CounterFamily: ...

    def gauge(self, name: str, doc: str, labels: Sequence[str]) -> GaugeFamily: ...

    def histogram(
        self, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> HistogramFamily:
        """A histogram with these bucket bounds (``+Inf`` is added); the same name with other
        buckets is a ``ValueError`` too."""
        ...

    def results(self, name: str, doc: str, route: str, results: Sequence[str]) -> dict[str, int]:
        """Plain per-route counts of a fixed set of results (``counts["allowed"] += 1``, no call
        and no lock per request), exported as the counter ``name{route, result}``."""
        ...


# -- API keys ------------------------------------------------------------------------------------


class KeyInfo(Protocol):
    """What is known about a verified API key (never its secret)."""

    @property
    def key_id(self) -> str: ...

    @property
    def tenant(self) -> str: ...

    @property
    def scopes(self) -> frozenset[str]: ...


class KeyVerifier(Protocol):
    """The API key store, as an authentication plugin uses it."""

    def cached(self, presented: str) -> KeyInfo | None:
        """The key's record when it was verified recently and is still valid, without awaiting
        anything; None means "not known here": ask :meth:`verify`."""
        ...

    async def verify(self, presented: str) -> KeyInfo | None:
        """The key's record, or None for a malformed, unknown, wrong, expired or revoked key."""
        ...


# -- plugin state --------------------------------------------------------------------------------


class LimitDecision(Protocol):
    """The answer for one request against one limit."""

    @property
    def allowed(self) -> bool: ...

    @property
    def limit(self) -> int: ...

    @property
    def remaining(self) -> int: ...

    @property
    def reset(self) -> float: ...

    @property
    def retry_after(self) -> float: ...


class BudgetReservation(Protocol):
    """The answer to ``reserve``: every item was added to its counter (``allowed``) or none
    was (``refused`` lists the positions of the items that would have gone over their limit).
    Each list has one entry per item, in order."""

    @property
    def allowed(self) -> bool: ...

    @property
    def windows(self) -> list[int]:
        """The window each item's amount landed in (``now // period``): give it to
        ``adjust`` to correct that same window."""
        ...

    @property
    def used(self) -> list[int]:
        """Each counter after the reservation (allowed) or as it is (refused)."""
        ...

    @property
    def resets(self) -> list[float]:
        """Seconds until each item's window ends."""
        ...

    @property
    def refused(self) -> list[int]: ...


class Limiter(Protocol):
    """Rate-limit state in this process: answers at once (``is_async`` is False).

    Besides GCRA buckets and windows, budgets: ``reserve`` adds ``amount`` to the current
    epoch-aligned window (``now // period``) of each ``(key, limit, period, amount)`` if every
    counter stays within its ``limit``, else adds nothing (distinct keys; one atomic step);
    ``adjust`` adds ``delta`` (negative: a refund) to window ``window`` of each ``(key, period,
    window, delta)`` and is never refused (a count stays >= 0; an ended window is left alone;
    ``window`` -1: the current one)."""

    @property
    def is_async(self) -> bool: ...

    def gcra(self, key: str, interval: float, burst: int, cost: int = 1) -> LimitDecision: ...

    def window(self, key: str, limit: int, period: float, cost: int = 1) -> LimitDecision: ...

    def reserve(self, items: Sequence[tuple[str, int, float, int]]) -> BudgetReservation: ...

    def adjust(self, items: Sequence[tuple[str, float, int, int]]) -> None: ...


class AsyncLimiter(Protocol):
    """Rate-limit state shared through Redis: every decision is awaited (``is_async`` True);
    a budget's ``reserve`` is one script, atomic across every gateway on the server. Errors
    of the store raise an exception (the backend could not answer)."""

    @property
    def is_async(self) -> bool: ...

    async def gcra(self, key: str, interval: float, burst: int, cost: int = 1) -> LimitDecision: ...

    async def window(self, key: str, limit: int, period: float, cost: int = 1) -> LimitDecision: ...

    async def reserve(self, items: Sequence[tuple[str, int, float, int]]) -> BudgetReservation: ...

    async def adjust(self, items: Sequence[tuple[str, float, int, int]]) -> None: ...


class StateStores(Protocol):
    """Backends for plugin state. ``backend`` is the configured default (``state.backend``); a
    plugin may ask for the other one explicitly."""

    @property
    def backend(self) -> Literal["memory", "redis"]: ...

    def redis(self) -> Any:
        """The process's one ``redis.asyncio`` client (made on first use)."""
        ...

    def memory_limiter(self, max_entries: int, name: str | None = None) -> Limiter:
        """A limiter in this process, at most ``max_entries`` keys. With ``name``, the same one
        for the same name for the life of the process, whatever the config generation (its
        counts outlive a reload that changes the plugin's config, as Redis's do); without,
        a new one (keep it across reloads with ``context.keep``)."""
        ...

    def redis_limiter(self, prefix: str) -> AsyncLimiter: ...

    def shared(self, name: str, factory: Callable[[], T]) -> T:
        """The process's object called ``name`` (made by ``factory`` on first use), the same
        for every generation whatever the config: small, bounded state that must outlive a
        reload that changes the plugin's config (``context.keep`` keeps an object only while
        the config is unchanged). Name it after the plugin (``"llm:metrics:tenants"``)."""
        ...


# -- all of them ---------------------------------------------------------------------------------


class PluginServices(Protocol):
    """The daemon's shared services, as ``PluginContext.services`` gives them to a plugin."""

    @property
    def events(self) -> EventPublisher: ...

    @property
    def metrics(self) -> MetricsFactory: ...

    @property
    def keys(self) -> KeyVerifier: ...

    @property
    def stores(self) -> StateStores: ...

    @property
    def upstreams(self) -> UpstreamDirectory:
        """Upstreams added and removed at run time (see :class:`UpstreamDirectory`)."""
        ...

    @property
    def state_dir(self) -> Path:
        """The directory for the gateway's files (``state.dir``): a plugin keeps its own files
        in a subdirectory named after it (e.g. ``<state_dir>/llm/``), which it creates."""
        ...
