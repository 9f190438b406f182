"""Byte ranges (RFC 9110 14) served from a stored full response.

One range (``first-last``, ``first-``, ``-suffix``) gets a 206 with that part; several ranges
get the whole 200 (a server may ignore a Range header, RFC 9110 14.2); a syntactically invalid
Range, or another unit, is ignored (200); a valid one that no byte of the body satisfies gets
416 with ``Content-Range: bytes */<length>``."""

from __future__ import annotations

import re
from typing import Final

from multidict import CIMultiDict

from gatewayd.chain import RequestContext, Response
from gatewayd.plugins.cache.policy import Entry, if_range_matches

UNSATISFIABLE: Final = "unsatisfiable"
_SPEC = re.compile(r"([0-9]*)-([0-9]*)")


def byte_range(value: str, length: int) -> tuple[int, int] | str | None:
    """``(first, last)`` (inclusive) of the one range in ``value`` for a body of ``length``
    bytes; :data:`UNSATISFIABLE`; or None to answer with the whole body."""
    unit, eq, ranges = value.strip(" \t").partition("=")
    if not eq or unit.lower() != "bytes":
        return None
    specs = [s.strip(" \t") for s in ranges.split(",")]
    specs = [s for s in specs if s]
    parsed: list[tuple[str, str]] = []
    for spec in specs:
        m = _SPEC.fullmatch(spec)
        if m is None or (not m[1] and not m[2]):
            return None
        if m[1] and m[2] and int(m[2]) < int(m[1]):
            return None  # last-pos before first-pos: an invalid range-spec
        parsed.append((m[1], m[2]))
    if len(parsed) != 1:
        return None  # none (invalid) or several: the whole representation
    first, last = parsed[0]
    if not first:  # suffix-range
        suffix = int(last)
        if suffix == 0 or length == 0:
            return UNSATISFIABLE
        return max(0, length - suffix), length - 1
    start = int(first)
    if start >= length:
        return UNSATISFIABLE
    end = length - 1 if not last else min(int(last), length - 1)
    return start, end


def range_reply(
    ctx: RequestContext, entry: Entry, headers: CIMultiDict[str], ranges: str
) -> Response:
    """A Range request answered from the stored 200 (``headers``: what the hit sends): 206 with
    the one range, 416 when no byte satisfies it, the whole 200 for several ranges, an invalid
    Range or an If-Range that does not match."""
    if_range = ctx.request.headers.get("If-Range")
    if if_range is not None and not if_range_matches(entry, if_range):
        return Response(200, headers, entry.body)
    length = len(entry.body)
    span = byte_range(ranges, length)
    if span is None:
        return Response(200, headers, entry.body)
    if isinstance(span, str):  # UNSATISFIABLE
        reply = ctx.error_response(
            416, "range_not_satisfiable", "the range is outside the representation"
        )
        reply.headers["Content-Range"] = f"bytes */{length}"
        reply.headers["X-Cache"] = headers["X-Cache"]
        return reply
    first, last = span
    headers.popall("Content-Length", None)
    headers["Content-Range"] = f"bytes {first}-{last}/{length}"
    headers["Content-Length"] = str(last - first + 1)
    return Response(206, headers, entry.body[first : last + 1])
