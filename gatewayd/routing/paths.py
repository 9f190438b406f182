"""Path normalisation, done once before matching; the result is what gets forwarded.

- percent-escapes of unreserved characters (``A-Z a-z 0-9 - . _ ~``) are decoded (``%2e`` is
  ``.``, ``%41`` is ``A``); other escapes are kept, with upper-case hex (``%2f`` stays encoded);
- duplicate slashes are merged;
- dot segments are removed (RFC 3986 §5.2.4); ``..`` never climbs above ``/``;
- a malformed escape, an encoded NUL or a control character is refused (400).
"""

from __future__ import annotations

import re

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE_RE = re.compile(r"%(.{0,2})")
_SLASHES_RE = re.compile(r"/{2,}")
_CONTROL_RE = re.compile(r"[\x00-\x20\x7f]")
_HEX = frozenset("0123456789abcdefABCDEF")


class BadPath(ValueError):
    """The request target cannot be normalised into a safe path."""


def _unescape(m: re.Match[str]) -> str:
    hx = m.group(1)
    if len(hx) != 2 or hx[0] not in _HEX or hx[1] not in _HEX:
        raise BadPath("malformed percent-escape")
    ch = chr(int(hx, 16))
    if ch in _UNRESERVED:
        return ch
    if int(hx, 16) < 0x20 or int(hx, 16) == 0x7F:
        raise BadPath("encoded control character in path")
    return "%" + hx.upper()


def remove_dot_segments(path: str) -> str:
    out: list[str] = []
    segments = path.split("/")
    for seg in segments[1:]:
        if seg == "..":
            if out:
                out.pop()
        elif seg != ".":
            out.append(seg)
    # A trailing "." or ".." leaves a directory: keep the trailing slash.
    if segments[-1] in (".", "..") and (not out or out[-1] != ""):
        out.append("")
    return "/" + "/".join(out)


def normalise_path(raw: str) -> str:
    """Normalise the path part (no query) of a request target."""
    if not raw.startswith("/"):
        if raw == "*" or not raw:
            raise BadPath("request target must be an absolute path")
        raise BadPath("request target must start with '/'")
    if _CONTROL_RE.search(raw):
        raise BadPath("control character or space in path")
    path = _ESCAPE_RE.sub(_unescape, raw) if "%" in raw else raw
    if "//" in path:
        path = _SLASHES_RE.sub("/", path)
    if "/." in path:
        path = remove_dot_segments(path)
    return path
