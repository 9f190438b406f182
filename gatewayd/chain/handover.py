"""State kept across reloads: objects a plugin ``keep()``-s, keyed by its identity and config."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("gatewayd.chain")


class Handover:
    """One generation's kept objects. Built from the previous generation's, if any."""

    def __init__(self, previous: Handover | None = None) -> None:
        self._previous = dict(previous.objects) if previous else {}
        self.objects: dict[str, Any] = {}

    def keep(self, key: str, factory: Callable[[], T]) -> T:
        if key in self.objects:
            return self.objects[key]  # type: ignore[no-any-return]
        obj = self._previous[key] if key in self._previous else factory()
        self.objects[key] = obj
        return obj

    def abandoned_by(self, successor: Handover) -> list[Any]:
        """Objects of this generation that the successor did not keep (to close once drained)."""
        kept = {id(o) for o in successor.objects.values()}
        return [o for o in self.objects.values() if id(o) not in kept]

    def forget_previous(self) -> None:
        self._previous.clear()


async def close_objects(objects: list[Any]) -> None:
    for obj in objects:
        close = getattr(obj, "close", None)
        if not callable(close):
            continue
        try:
            result = close()
            if inspect.isawaitable(result):
                await asyncio.wait_for(result, 10)
        except Exception:
            log.exception("closing kept state failed", extra={"object": type(obj).__name__})
