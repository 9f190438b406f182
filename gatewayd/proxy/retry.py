"""Retry policy for the forwarder: which failures may be retried, how long to wait (exponential
backoff with full jitter) and a budget so retries cannot multiply the load of an outage."""

from __future__ import annotations

import random
import time
from collections import deque

from gatewayd.chain.api import IDEMPOTENT_METHODS, Request
from gatewayd.config.schema import RetriesConfig

BUDGET_WINDOW = 10  # seconds


class RetryBudget:
    """Retries may be at most ``ratio`` of the requests seen in the last ten seconds, plus
    ``minimum`` per window (so an upstream with little traffic can still retry)."""

    __slots__ = ("_buckets", "minimum", "ratio")

    def __init__(self, ratio: float, minimum: int) -> None:
        self.ratio = ratio
        self.minimum = minimum
        self._buckets: deque[list[int]] = deque()  # [second, requests, retries]

    def _bucket(self) -> list[int]:
        sec = int(time.monotonic())
        buckets = self._buckets
        if not buckets or buckets[-1][0] != sec:
            buckets.append([sec, 0, 0])
            while buckets[0][0] <= sec - BUDGET_WINDOW:
                buckets.popleft()
        return buckets[-1]

    def request(self) -> None:
        self._bucket()[1] += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when it is spent."""
        bucket = self._bucket()
        requests = sum(b[1] for b in self._buckets)
        retries = sum(b[2] for b in self._buckets)
        if retries + 1 > self.ratio * requests + self.minimum:
            return False
        bucket[2] += 1
        return True


class RetryPolicy:
    def __init__(self, config: RetriesConfig, budget: RetryBudget) -> None:
        self.config = config
        self.budget = budget
        self.statuses = frozenset(config.statuses)

    def replayable(self, request: Request) -> bool:
        """May this request be sent twice if it did reach a target?"""
        if request.method in IDEMPOTENT_METHODS:
            return True
        return self.config.idempotency_key and "Idempotency-Key" in request.headers

    def retryable(
        self, request: Request, tries: int, error: str | None, status: int | None
    ) -> bool:
        """After ``tries`` attempts, the last one failing with ``error`` or ``status``: is
        another attempt allowed (budget aside)? A request body that was streamed to the target
        cannot be sent again, so only bodies held in memory (or none) are replayed."""
        if tries > self.config.attempts:
            return False
        if error == "connect":
            return True  # the request never reached the target: any method may go elsewhere
        body = request.body
        if body is not None and not isinstance(body, bytes):
            return False
        if error is not None:
            return self.replayable(request)
        return status is not None and status in self.statuses and self.replayable(request)

    def backoff(self, retry: int) -> float:
        """Full jitter: uniform in [0, min(max_backoff, backoff * 2^retry)]."""
        cap = min(self.config.max_backoff, self.config.backoff * (2**retry))
        return random.uniform(0.0, cap)
