"""Byte ranges (RFC 9110 14) served from a stored full response.

One range (``first-last``, ``first-``, ``-suffix``) gets a 206 with that part; several ranges
get the whole 200 (a server may ignore a Range header, RFC 9110 14.2); a syntactically invalid
Range, or another unit, is ignored (200); a valid one that no byte of the body satisfies gets
416 with ``Content-Range: bytes */<length>``."""

from __future__ import annotations

import re
from typing import Final

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
