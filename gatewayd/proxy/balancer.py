"""Choosing a target: round robin, least connections, or rendezvous hashing on a key."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(slots=True, eq=False)
class Target:
    """One backend address of an upstream, with the state the balancer and health checks use."""

    url: str  # scheme://host:port, no trailing slash
    inflight: int = 0
    healthy: bool = True  # active health checks say so
    ejected: bool = False  # passive ejection: too many consecutive failures lately
    failures: int = 0  # consecutive failed attempts (passive ejection)
    seed: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        self.seed = self.url.encode()

    def available(self, excluded: set[str]) -> bool:
        return self.healthy and not self.ejected and self.url not in excluded


class Balancer:
    """Picks among the targets that are available (healthy and not excluded by a plugin)."""

    def __init__(self, targets: Sequence[Target]) -> None:
        self.targets = list(targets)

    def candidates(self, excluded: set[str]) -> list[Target]:
        return [t for t in self.targets if t.available(excluded)]

    def pick(self, excluded: set[str], key: str | None = None) -> Target | None:
        raise NotImplementedError


class RoundRobin(Balancer):
    def __init__(self, targets: Sequence[Target]) -> None:
        super().__init__(targets)
        self._next = 0

    def pick(self, excluded: set[str], key: str | None = None) -> Target | None:
        n = len(self.targets)
        for _ in range(n):
            t = self.targets[self._next % n]
            self._next = (self._next + 1) % n
            if t.available(excluded):
                return t
        return None


class LeastConn(Balancer):
    def __init__(self, targets: Sequence[Target]) -> None:
        super().__init__(targets)
        self._rr = 0

    def pick(self, excluded: set[str], key: str | None = None) -> Target | None:
        best: Target | None = None
        n = len(self.targets)
        self._rr = (self._rr + 1) % n  # rotate the start so ties spread out
        for i in range(n):
            t = self.targets[(self._rr + i) % n]
            if t.available(excluded) and (best is None or t.inflight < best.inflight):
                best = t
        return best


class RendezvousHash(Balancer):
    """Highest-random-weight hashing: a key keeps its target; a lost target moves only its keys."""

    def pick(self, excluded: set[str], key: str | None = None) -> Target | None:
        k = (key or "").encode()
        best: Target | None = None
        best_score = b""
        for t in self.targets:
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
