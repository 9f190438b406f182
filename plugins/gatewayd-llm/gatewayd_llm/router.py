"""Which deployment serves a request: weighted choice or least busy, skipping deployments whose
breaker is open or whose context window is too small, then the fallback models' deployments.

State per deployment (in-flight count, breaker) lives in :class:`RouterState`, which the plugin
keeps across reloads (``context.keep``), keyed by the deployment's upstream and model, so a
reload neither closes an open breaker nor forgets who is busy.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from gatewayd_llm.config import BreakerConfig, DeploymentConfig, LlmConfig

__all__ = ["Breaker", "Candidates", "Deployment", "Router", "RouterState"]


@dataclass(slots=True)
class Breaker:
    """Consecutive failures open it for ``open_for``; then one trial request (half open)
    closes it on success or opens it again on failure."""

    failures: int = 0
    open_until: float = 0.0  # monotonic; 0: closed
    trial: bool = False  # a half-open trial is under way

    def state(self, now: float) -> Literal["closed", "open", "half_open"]:
        if self.open_until == 0.0:
            return "closed"
        return "open" if now < self.open_until or self.trial else "half_open"

    def allows(self, now: float) -> bool:
        return self.state(now) != "open"

    def begin(self, now: float) -> None:
        if self.state(now) == "half_open":
            self.trial = True

    def success(self) -> None:
        self.failures = 0
        self.open_until = 0.0
        self.trial = False

    def abandon(self) -> None:
        """The attempt ended without an outcome (the client left): another may try."""
        self.trial = False

    def failure(self, config: BreakerConfig, now: float) -> bool:
        """Count a failure; True when this opened the breaker."""
        self.failures += 1
        was_trial, self.trial = self.trial, False
        if was_trial or self.failures >= config.failures:
            opened = self.open_until == 0.0 or was_trial
            self.open_until = now + config.open_for
            return opened
        return False


@dataclass(slots=True)
class DeploymentState:
    inflight: int = 0
    breaker: Breaker = field(default_factory=Breaker)


class RouterState:
    """Every deployment's state, by ``upstream/model`` (kept across reloads)."""

    def __init__(self) -> None:
        self.deployments: dict[str, DeploymentState] = {}

    def of(self, config: DeploymentConfig) -> DeploymentState:
        key = f"{config.upstream}/{config.model}"
        state = self.deployments.get(key)
        if state is None:
            state = self.deployments[key] = DeploymentState()
        return state


@dataclass(slots=True, eq=False)
class Deployment:
    model: str  # the client's model name
    index: int
    config: DeploymentConfig
    state: DeploymentState

    @property
    def name(self) -> str:
        return f"{self.model}#{self.index}"

    @property
    def upstream(self) -> str:
        return self.config.upstream

    def fits(self, tokens: int) -> bool:
        window = self.config.context_window
        return window is None or tokens <= window


@dataclass(slots=True)
class Candidates:
    """The deployments to try, in order, and why others were left out."""

    order: list[Deployment]
    too_small: int = 0  # skipped: context window smaller than the request
    open_breakers: int = 0  # skipped: breaker open
    retry_after: float = 0.0  # when the first open breaker lets a trial through
    largest_window: int | None = None


class Router:
    def __init__(
        self,
        config: LlmConfig,
        state: RouterState,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.state = state
        self.rng = rng or random.Random()
        self.clock = clock
        self.models: dict[str, list[Deployment]] = {
            model: [Deployment(model, i, d, state.of(d)) for i, d in enumerate(deployments)]
            for model, deployments in config.models.items()
        }
        self.chains = {model: config.chain(model) for model in config.models}

    def order(self, deployments: list[Deployment]) -> list[Deployment]:
        """Weighted random order (each next pick in proportion to weight among those left), or
        least busy first (in flight per unit of weight, ties at random)."""
        if len(deployments) < 2:
            return list(deployments)
        rng = self.rng
        if self.config.routing == "least_busy":
            keyed = [(d.state.inflight / d.config.weight, rng.random(), d) for d in deployments]
            keyed.sort(key=lambda k: (k[0], k[1]))
            return [k[2] for k in keyed]
        # Efraimidis-Spirakis: sort by u^(1/w), a weighted sample without replacement.
        keyed = [(rng.random() ** (1.0 / d.config.weight), 0.0, d) for d in deployments]
        keyed.sort(key=lambda k: k[0], reverse=True)
        return [k[2] for k in keyed]

    def candidates(self, model: str, tokens: int) -> Candidates:
        """The deployments of ``model`` and then of its fallbacks, each model's in its own
        order, that fit ``tokens`` (prompt estimate + max output) and whose breaker allows."""
        now = self.clock()
        out = Candidates([])
        retry: list[float] = []
        for name in self.chains[model]:
            usable: list[Deployment] = []
            for d in self.models[name]:
                window = d.config.context_window
                if window is not None and (out.largest_window or 0) < window:
                    out.largest_window = window
                if not d.fits(tokens):
                    out.too_small += 1
                elif not d.state.breaker.allows(now):
                    out.open_breakers += 1
                    retry.append(d.state.breaker.open_until - now)
                else:
                    usable.append(d)
            out.order.extend(self.order(usable))
        out.retry_after = max(0.0, min(retry)) if retry else 0.0
        return out

    # -- outcomes ---------------------------------------------------------------------------

    def begin(self, d: Deployment) -> None:
        d.state.inflight += 1
        d.state.breaker.begin(self.clock())

    def end(self, d: Deployment) -> None:
        d.state.inflight -= 1

    def success(self, d: Deployment) -> None:
        d.state.breaker.success()

    def failure(self, d: Deployment) -> bool:
        """A failed attempt; True when it opened the deployment's breaker."""
        return d.state.breaker.failure(self.config.breaker, self.clock())

    def abandon(self, d: Deployment) -> None:
        d.state.breaker.abandon()
