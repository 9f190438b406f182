"""Choosing a target: round robin, least connections, or rendezvous hashing on a key.

A balancer is given the upstream's targets on every pick (a relay lease's peers come and go);
a target is skipped when it is unhealthy, ejected, or its id is in ``excluded`` (open breakers,
targets a retry already tried)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from gatewayd.chain.upstream import Target

__all__ = ["BALANCERS", "Balancer", "LeastConn", "RendezvousHash", "RoundRobin", "Target"]


class Balancer:
    def pick(
        self, targets: Sequence[Target], excluded: set[str], key: str | None = None
    ) -> Target | None:
        raise NotImplementedError


class RoundRobin(Balancer):
    def __init__(self) -> None:
        self._next = 0

    def pick(
        self, targets: Sequence[Target], excluded: set[str], key: str | None = None
    ) -> Target | None:
        n = len(targets)
        for _ in range(n):
            t = targets[self._next % n]
            self._next = (self._next + 1) % n
            if t.available(excluded):
                return t
        return None


class LeastConn(Balancer):
    def __init__(self) -> None:
        self._rr = 0

    def pick(
        self, targets: Sequence[Target], excluded: set[str], key: str | None = None
    ) -> Target | None:
        best: Target | None = None
        n = len(targets)
        if not n:
            return None
        self._rr = (self._rr + 1) % n  # rotate the start so ties spread out
        for i in range(n):
            t = targets[(self._rr + i) % n]
            if t.available(excluded) and (best is None or t.inflight < best.inflight):
                best = t
        return best


class RendezvousHash(Balancer):
    """Highest-random-weight hashing: a key keeps its target; a lost target moves only its keys."""

    def pick(
        self, targets: Sequence[Target], excluded: set[str], key: str | None = None
    ) -> Target | None:
        k = (key or "").encode()
        best: Target | None = None
        best_score = b""
        for t in targets:
            if not t.available(excluded):
                continue
            score = hashlib.blake2b(t.seed + b"\0" + k, digest_size=8).digest()
            if best is None or score > best_score:
                best, best_score = t, score
        return best


BALANCERS: dict[str, type[Balancer]] = {
    "round_robin": RoundRobin,
    "least_conn": LeastConn,
    "hash": RendezvousHash,
}
