"""The process's current provider secrets, by credential name (a provider's ``credential:``).

One :class:`Credentials` per process, shared by the provider kinds (which read a secret at send
time) and the catalog (which sets them from the sealed store and on rotation)::

    creds = credentials(context.services)      # services.stores.shared("llm:credentials", ...)
    creds.set("openai-2", new_secret, grace=300.0)

During ``grace`` seconds after a change the previous secret is the *alternate*: a request
refused with 401 under one of the two is retried once with the other (in both directions: the
provider may not have the new one yet, or may have dropped the old one already). Nothing here
logs or formats a secret.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

from gatewayd.chain import PluginServices

__all__ = ["SHARED_NAME", "Credentials", "credentials"]

SHARED_NAME = "llm:credentials"


@dataclass(slots=True)
class _Entry:
    current: str
    previous: str | None = None
    until: float = 0.0  # the previous one is the alternate while the clock is below this


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class Credentials:
    """Current (and, within grace, previous) secret of each credential name."""

    __slots__ = ("_clock", "_entries")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    def __repr__(self) -> str:  # never the secrets
        return f"<Credentials {sorted(self._entries)}>"

    def set(self, name: str, secret: str, grace: float = 0.0) -> None:
        """``secret`` is ``name``'s current one from now on; the one it replaces stays the
        alternate for ``grace`` seconds (0: not at all). Setting the current one again changes
        nothing."""
        if not secret:
            raise ValueError(f"credential '{name}': the secret is empty")
        entry = self._entries.get(name)
        if entry is None:
            self._entries[name] = _Entry(secret)
            return
        if _same(entry.current, secret):
            return
        if grace > 0:
            entry.previous, entry.until = entry.current, self._clock() + grace
        else:
            entry.previous, entry.until = None, 0.0
        entry.current = secret

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def current(self, name: str) -> str | None:
        entry = self._entries.get(name)
        return entry.current if entry is not None else None

    def alternate(self, name: str, used: str | None) -> str | None:
        """The other secret of ``name`` while within grace, for one retry of a request that
        ``used`` one of them; None when there is none (or ``used`` is neither)."""
        entry = self._entries.get(name)
        if entry is None or entry.previous is None or used is None:
            return None
        if self._clock() >= entry.until:
            entry.previous, entry.until = None, 0.0
            return None
        if _same(used, entry.current):
            return entry.previous
        if _same(used, entry.previous):
            return entry.current
        return None

    def secrets(self, name: str) -> tuple[str, ...]:
        """Every secret ``name`` may still send (to scrub them out of a provider's text)."""
        entry = self._entries.get(name)
        if entry is None:
            return ()
        if entry.previous is not None and self._clock() < entry.until:
            return (entry.current, entry.previous)
        return (entry.current,)


def credentials(services: PluginServices) -> Credentials:
    """The process's :class:`Credentials` (``services.stores.shared("llm:credentials")``)."""
    return services.stores.shared(SHARED_NAME, Credentials)
