"""One request's accounting: exactly one usage record, whatever becomes of the request.

:class:`Ledger` follows the request through its attempts and is finished exactly once, from
wherever the request ends: a local reply, a whole answer, the end of a stream (complete, failed
or cancelled), a cancellation while waiting for the provider, or, failing all of those, the
plugin's ``on_done``. Finishing is synchronous (it never awaits, so it works from a cancelled
task or a closing iterator): the record goes to the usage store's queue and to the metrics,
and the limits' settlement is handed to a task.

Which tokens are recorded:

- the provider reported usage and the answer is complete: the provider's counts (``provider``;
  an explicit zero stays a zero);
- the provider reported some and the answer is not complete (cancelled, failed mid-stream):
  ``partial``, the provider's counts, with completion tokens at least those relayed;
- the provider reported nothing: ``estimated``, the prompt estimate (when a provider was asked)
  and the content chunks relayed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gatewayd_llm.exchange import Exchange, Operation, UsageSource
from gatewayd_llm.usage import UsageRecord

if TYPE_CHECKING:
    from gatewayd_llm.limits import Limits, Reservation
    from gatewayd_llm.router import Deployment

log = logging.getLogger("gatewayd_llm.plugin")

LEDGER = "llm.ledger"  # the key in ctx.state


@dataclass(slots=True)
class Ledger:
    request_id: str
    route: str
    operation: Operation
    model: str  # the client's model name (may be unknown: a 404 is recorded too)
    key_id: str | None
    tenant: str | None
    stream: bool = False
    started: float = field(default_factory=time.monotonic)
    prompt_estimate: int = 0
    deployment: Deployment | None = None
    exchange: Exchange | None = None
    attempts: int = 0
    reservation: Reservation | None = None
    done: bool = False
    record: UsageRecord | None = None
    provider_wait: float = 0.0  # seconds spent waiting for providers (for the overhead metric)
    # Reservations of the deployments' own limits: (limits, reservation, deployment name)
    holds: list[tuple[Limits, Reservation, str]] = field(default_factory=list)

    def attempt(self, deployment: Deployment, exchange: Exchange) -> None:
        self.deployment = deployment
        self.exchange = exchange
        self.attempts += 1

    @property
    def fallbacks(self) -> int:
        return max(0, self.attempts - 1)

    def tokens(self, complete: bool, relayed: int) -> tuple[int, int, UsageSource]:
        exchange = self.exchange
        usage = exchange.usage if exchange is not None else None
        if usage is not None:
            if complete:
                return usage.prompt_tokens, usage.completion_tokens, "provider"
            prompt = usage.prompt_tokens or self.prompt_estimate
            return prompt, max(usage.completion_tokens, relayed), "partial"
        prompt = self.prompt_estimate if exchange is not None else 0
        return prompt, relayed, "estimated"

    def finish(
        self,
        status: int,
        *,
        complete: bool,
        cancelled: bool = False,
        relayed: int = 0,
        price: Callable[[int, int], float] | None = None,
    ) -> UsageRecord | None:
        """The request's usage record, made once (None when it was made already)."""
        if self.done:
            return None
        self.done = True
        prompt, completion, source = self.tokens(complete, relayed)
        exchange, deployment = self.exchange, self.deployment
        now = time.monotonic()
        ttft = None
        if self.stream and exchange is not None and exchange.first_byte_at is not None:
            ttft = (exchange.first_byte_at - self.started) * 1000
        rec = UsageRecord(
            request_id=self.request_id,
            time=time.time(),
            route=self.route,
            model=self.model,
            deployment=deployment.name if deployment is not None else None,
            upstream=deployment.upstream if deployment is not None else None,
            provider_model=deployment.config.model if deployment is not None else None,
            key_id=self.key_id,
            tenant=self.tenant,
            prompt_tokens=prompt,
            completion_tokens=completion,
            source=source,
            cost=price(prompt, completion) if price is not None else 0.0,
            status=status,
            stream=self.stream,
            cancelled=cancelled,
            duration_ms=(now - self.started) * 1000,
            ttft_ms=ttft,
            fallbacks=self.fallbacks,
        )
        self.record = rec
        return rec


def describe(rec: UsageRecord) -> dict[str, Any]:
    """A usage record as a log line's extra fields (no key, no content)."""
    return {
        "request_id": rec.request_id,
        "model": rec.model,
        "deployment": rec.deployment,
        "prompt_tokens": rec.prompt_tokens,
        "completion_tokens": rec.completion_tokens,
        "source": rec.source,
        "status": rec.status,
    }
