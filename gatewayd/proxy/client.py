"""The aiohttp client request class the forwarder uses.

A proxy forwards the client's headers as they are: aiohttp's default request adds
``Accept``, ``Accept-Encoding`` and ``User-Agent`` when they are missing (which would make a
backend compress for a client that never asked), and its ``skip_auto_headers`` option rebuilds a
header set on every request to avoid that. This subclass adds nothing, at no cost.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import ClientRequest
from multidict import CIMultiDict, CIMultiDictProxy

# Also keeps aiohttp from inventing a Content-Type for a streamed body the client sent without one.
_SKIP: CIMultiDict[None] = CIMultiDict({"Content-Type": None})
_SKIP_VIEW = CIMultiDictProxy(_SKIP)


class ProxyClientRequest(ClientRequest):
    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        self._skip_auto_headers = _SKIP_VIEW  # type: ignore[assignment]
