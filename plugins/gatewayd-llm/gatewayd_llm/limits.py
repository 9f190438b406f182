"""Token, request and cost limits: reserve before a request is sent, settle to what it used.

``limits: [{tokens: 100000/min, key: tenant}, {requests: 600/min, key: api_key}, {cost: 20/day,
key: tenant}]``. Each limit counts one quantity per value of its key in **fixed windows aligned
to the epoch**, as ``rate_limit``'s quotas do (``/min`` resets at every whole minute, ``/day``
at 00:00 UTC). Before a request is sent, :meth:`Limits.reserve` adds its estimate (prompt tokens
plus ``max_tokens``, its estimated cost, one request) to the current window of every limit that
applies, in one atomic step over all of them: in this process (one synchronous section of the
event loop) or in Redis (one Lua script, so several gateways share each budget). If any limit
would go over, nothing is added and :class:`LimitExceeded` says when to retry. Afterwards
:meth:`Limits.settle` replaces the estimate by what the request really used, in the window the
reservation landed in (a refund or a top-up, never refused, exactly once).

Counters live in the state store of gatewayd's ``services.stores`` (memory: at most
``max_entries`` keys, least recently used dropped; Redis: each window's counter expires a second
after the window ends). Key values longer than 128 characters are hashed; header values always
are (they never reach the store as sent).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import field_validator, model_validator

from gatewayd.chain import PluginConfig, Rate, RateValue, StateStores

KEY_KINDS = ("global", "api_key", "tenant", "model", "route")
MAX_KEY_CHARS = 128  # longer key values are hashed, so a hostile value cannot grow memory
COST_UNITS = 1_000_000  # cost counters count millionths of the prices' currency (integers)
NO_VALUE = "-"  # the shared counter of requests without a value for the key (no tenant, ...)
Dimension = Literal["tokens", "requests", "cost"]
T = TypeVar("T")

log = logging.getLogger("gatewayd_llm.limits")


class LimitSpec(PluginConfig):
    """One limit: exactly one of ``tokens``, ``requests``, ``cost`` (a rate such as
    ``100000/min``; cost in the currency of ``prices``, e.g. ``20/day`` or ``0.5/h``), counted
    per value of ``key``: ``global``, ``api_key`` (the key's id), ``tenant``, ``model`` (the
    client's model name), ``route`` or ``header:<name>``."""

    tokens: Rate | None = None
    requests: Rate | None = None
    cost: Rate | None = None
    key: str = "global"

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        if v in KEY_KINDS:
            return v
        kind, _, name = v.partition(":")
        if kind == "header" and name.strip():
            return f"header:{name.strip().lower()}"
        raise ValueError(
            f"invalid key {v!r} (expected one of {', '.join(KEY_KINDS)} or header:<name>)"
        )

    @model_validator(mode="after")
    def _one(self) -> LimitSpec:
        given = [d for d in ("tokens", "requests", "cost") if getattr(self, d) is not None]
        if len(given) != 1:
            raise ValueError("a limit has exactly one of 'tokens', 'requests' or 'cost'")
        return self

    @property
    def dimension(self) -> Dimension:
        if self.tokens is not None:
            return "tokens"
        return "requests" if self.requests is not None else "cost"

    @property
    def rate(self) -> RateValue:
        rate = self.tokens or self.requests or self.cost
        assert rate is not None
        return rate

    @property
    def budget(self) -> int:
        """The limit as a counter value: tokens or requests, or millionths of the currency."""
        count = self.rate.count
        return round(count * COST_UNITS) if self.cost is not None else int(count)

    def describe(self) -> str:
        """E.g. ``tokens 100000/min per tenant`` (safe to show: no key value in it)."""
        return f"{self.dimension} {self.rate} per {self.key}"


@dataclass(frozen=True, slots=True)
class LimitSubject:
    """Who and what a request is, for the limits' keys. ``headers``: the request's headers
    (a case-insensitive mapping such as ``ctx.request.headers``)."""

    api_key: str | None
    tenant: str | None
    model: str
    route: str
    headers: Mapping[str, str] = field(default_factory=dict)

    def value(self, key: str) -> str | None:
        if key == "global":
            return ""
        if key == "api_key":
            return self.api_key
        if key == "tenant":
            return self.tenant
        if key == "model":
            return self.model
        if key == "route":
            return self.route
        name = key.partition(":")[2]
        headers = self.headers
        v = headers.get(name)
        if v is None:
            v = headers.get(name.title())
        return None if v is None else hashlib.sha256(v.encode()).hexdigest()[:32]


class LimitExceeded(Exception):
    """The request would go over ``limit`` (a :meth:`LimitSpec.describe` text): answer
    ``status`` (429) with ``Retry-After: ceil(retry_after)``. ``fits`` is False when the
    request alone needs more than the whole limit (no retry will help)."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, retry_after: float, limit: str, fits: bool = True) -> None:
        if fits:
            message = f"limit exceeded: {limit}; retry after {math.ceil(retry_after)}s"
        else:
            message = f"this request alone needs more than the limit: {limit}"
        super().__init__(message)
        self.retry_after = max(0.0, retry_after)
        self.limit = limit
        self.fits = fits
        self.message = message


class LimitsUnavailable(LimitExceeded):
    """The limits' store did not answer and ``on_store_error`` is ``deny``: answer 503."""

    status = 503
    code = "limits_unavailable"

    def __init__(self) -> None:
        super().__init__(1.0, "the limits' store is unavailable")
        self.message = "limits are unavailable"


@dataclass(frozen=True, slots=True)
class Counter:
    """One counter of a request: its store key, the quantity it counts, its window length and
    the tightest limit on it (several specs of one quantity, period and key share a counter)."""

    key: str
    dimension: Dimension
    period: float
    budget: int
    spec: LimitSpec


@dataclass(slots=True)
class Reservation:
    """What :meth:`Limits.reserve` added, for :meth:`Limits.settle`. ``counted`` is False when
    the store failed and ``on_store_error: allow`` let the request through (settle then adds
    the real usage to the current windows, as far as the store answers)."""

    counters: list[Counter]
    windows: list[int]
    tokens: int
    cost_units: int
    counted: bool = True
    settled: bool = False


def _amount(dimension: Dimension, tokens: int, cost_units: int) -> int:
    if dimension == "tokens":
        return tokens
    return 1 if dimension == "requests" else cost_units


def cost_units(cost: float) -> int:
    """A cost as the counters count it: millionths of the currency, rounded up (a reservation
    or a usage is never counted as smaller than it is)."""
    if not cost > 0:
        return 0
    return math.ceil(cost * COST_UNITS - 1e-6)


class Limits:
    """The compiled ``limits:`` of one plugin instance, on the store ``store`` (``default``:
    ``state.backend``). ``prefix`` names the counters: in Redis ``gatewayd:<prefix>:...``,
    shared by every gateway on it; in memory the process's limiter named ``gatewayd:<prefix>``
    (:meth:`StateStores.memory_limiter`), the same after every reload. A counter's name holds
    what it counts, its period and its key, never the limit's value: a reload that changes the
    config (a model, or the limit itself) carries the counts on. ``keep`` is accepted for
    callers written against the first version and not used."""

    def __init__(
        self,
        specs: list[LimitSpec],
        stores: StateStores,
        store: str = "default",
        prefix: str = "llm",
        *,
        on_store_error: Literal["allow", "deny"] = "allow",
        max_entries: int = 100_000,
        keep: Callable[[str, Callable[[], Any]], Any] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.specs = list(specs)
        self.on_store_error = on_store_error
        self.logger = logger or log
        self.store_errors = 0
        self._pending: set[asyncio.Future[Any]] = set()
        backend = stores.backend if store == "default" else store
        if backend not in ("memory", "redis"):
            raise ValueError(f"unknown limits store {store!r} (default, memory or redis)")
        self.backend = backend
        self.limiter: Any = None
        if self.specs:
            if backend == "redis":
                self.limiter = stores.redis_limiter(f"gatewayd:{prefix}:")
            else:
                self.limiter = stores.memory_limiter(max_entries, name=f"gatewayd:{prefix}")

    def counters(self, subject: LimitSubject) -> list[Counter]:
        """The request's counters, one per distinct (quantity, period, key value)."""
        found: dict[str, Counter] = {}
        for spec in self.specs:
            value = subject.value(spec.key)
            if value is None:
                value = NO_VALUE
            elif len(value) > MAX_KEY_CHARS:
                value = hashlib.sha256(value.encode()).hexdigest()
            dimension, period = spec.dimension, spec.rate.period
            key = f"{dimension}:{period:g}:{spec.key}:{value}"
            known = found.get(key)
            if known is None or spec.budget < known.budget:
                found[key] = Counter(key, dimension, period, spec.budget, spec)
        return list(found.values())

    async def reserve(self, subject: LimitSubject, tokens: int, cost: float) -> Reservation:
        """Reserve ``tokens`` (prompt estimate + ``max_tokens``), ``cost`` and one request in
        every limit that applies, all or nothing. Raises :class:`LimitExceeded` when over,
        :class:`LimitsUnavailable` when the store failed and ``on_store_error`` is deny."""
        tokens = max(0, int(tokens))
        units = cost_units(cost)
        counters = self.counters(subject) if self.specs else []
        if not counters:
            return Reservation([], [], tokens, units)
        items = [(c.key, c.budget, c.period, _amount(c.dimension, tokens, units)) for c in counters]
        try:
            if self.limiter.is_async:
                decision = await self._reserve_shielded(items)
            else:
                decision = self.limiter.reserve(items)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._store_failed("reserve", exc)
            if self.on_store_error == "deny":
                raise LimitsUnavailable() from exc
            return Reservation(counters, [-1] * len(counters), tokens, units, counted=False)
        if not decision.allowed:
            refused = decision.refused
            retry = max(decision.resets[i] for i in refused)
            worst = max(refused, key=lambda i: decision.resets[i])
            fits = all(items[i][3] <= items[i][1] for i in refused)
            raise LimitExceeded(retry, counters[worst].spec.describe(), fits)
        return Reservation(counters, list(decision.windows), tokens, units)

    async def _reserve_shielded(self, items: list[tuple[str, int, float, int]]) -> Any:
        """The store's reserve, carried through when the caller is cancelled meanwhile: a
        reservation the caller never saw is then given back at once."""
        task = asyncio.ensure_future(self.limiter.reserve(items))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            self._pending.add(task)
            task.add_done_callback(lambda t: self._undo(t, items))
            raise

    def _undo(self, task: asyncio.Future[Any], items: list[tuple[str, int, float, int]]) -> None:
        self._pending.discard(task)
        if task.cancelled() or task.exception() is not None or not task.result().allowed:
            return
        windows = task.result().windows
        undo = [(k, p, w, -a) for (k, _, p, a), w in zip(items, windows, strict=True) if a]
        self._track(asyncio.ensure_future(self._adjust(undo)))

    async def settle(self, reservation: Reservation, tokens: int, cost: float) -> None:
        """Replace the reservation by the real usage (``tokens`` used in all, ``cost``): a
        refund or a top-up in the windows the reservation landed in. Never refused and never
        raises; a second call for the same reservation does nothing. Carried through when the
        caller is cancelled meanwhile."""
        task = self.settle_nowait(reservation, tokens, cost)
        if task is not None:
            await asyncio.shield(task)

    def settle_nowait(
        self, reservation: Reservation, tokens: int, cost: float
    ) -> asyncio.Future[None] | None:
        """:meth:`settle` without awaiting, for code that must not (a closing iterator, a
        cancelled task, a synchronous finish): the memory store is settled before this
        returns; Redis's settlement is a task of its own (returned; :meth:`close` waits for
        it)."""
        if reservation.settled:
            return None
        reservation.settled = True
        tokens = max(0, int(tokens))
        units = cost_units(cost)
        items: list[tuple[str, float, int, int]] = []
        held_tokens, held_units = reservation.tokens, reservation.cost_units
        for counter, window in zip(reservation.counters, reservation.windows, strict=True):
            delta = _amount(counter.dimension, tokens, units)
            if reservation.counted:
                delta -= _amount(counter.dimension, held_tokens, held_units)
            if delta:
                items.append((counter.key, counter.period, window, delta))
        if not items:
            return None
        if not self.limiter.is_async:
            self.limiter.adjust(items)
            return None
        return self._track(asyncio.ensure_future(self._adjust(items)))

    async def _adjust(self, items: list[tuple[str, float, int, int]]) -> None:
        try:
            await self.limiter.adjust(items)
        except Exception as exc:
            self._store_failed("settle", exc)

    def _track(self, task: asyncio.Future[T]) -> asyncio.Future[T]:
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    def _store_failed(self, what: str, exc: Exception) -> None:
        self.store_errors += 1
        self.logger.warning("llm limits store failed", extra={"op": what, "error": str(exc)})

    async def close(self, timeout: float = 2.0) -> None:
        """Wait (at most ``timeout`` seconds) for settles and refunds still on their way."""
        pending = list(self._pending)
        if pending:
            await asyncio.wait(pending, timeout=timeout)


def subject_headers(headers: Mapping[str, str], specs: Sequence[LimitSpec]) -> dict[str, str]:
    """Only the headers the limits key on (a small dict to keep in a :class:`LimitSubject`)."""
    out: dict[str, str] = {}
    for spec in specs:
        if spec.key.startswith("header:"):
            name = spec.key[7:]
            v = headers.get(name)
            if v is not None:
                out[name] = v
    return out
