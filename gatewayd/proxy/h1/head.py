"""The request head as it goes on the wire: the request line with the target (path and query,
already encoded) as it is, the headers as they are given, in their order and with duplicates,
``Host`` from the target unless they carry one, and the framing of the body. Nothing else is
added: no ``User-Agent``, ``Accept``, ``Accept-Encoding``, ``Content-Type`` or ``Connection``."""

from __future__ import annotations

from collections.abc import AsyncIterable

from multidict import CIMultiDict

# Methods that carry no body by convention: no ``Content-Length: 0`` is added for them (aiohttp's
# client did the same).
BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})

Body = bytes | bytearray | memoryview | AsyncIterable[bytes] | None


def encode_head(
    method: str, target: str, host: str, headers: CIMultiDict[str], body: Body
) -> tuple[bytes, int | None]:
    """The head's bytes, and for a streamed body the ``Content-Length`` it must be sent with
    (``None``: chunked). ``host`` is the target's ``host[:port]``. Raises ``ValueError`` for a
    line break in the method, target or a header (a header injection, never sent)."""
    length: int | None = None
    extra = ""
    lines = 2 + len(headers)  # the request line, the headers, the blank line
    if body is None:
        if method not in BODYLESS and "Content-Length" not in headers:
            extra = "Content-Length: 0\r\n"
            lines += 1
    elif isinstance(body, bytes | bytearray | memoryview):
        size = str(len(body))
        given = headers.get("Content-Length")
        if given is None:
            extra = f"Content-Length: {size}\r\n"
            lines += 1
        elif given != size:  # the body's own length is the truth
            headers = headers.copy()
            headers["Content-Length"] = size
    else:
        given = headers.get("Content-Length")
        if given is not None:
            length = int(given)
        elif "Transfer-Encoding" not in headers:
            extra = "Transfer-Encoding: chunked\r\n"
            lines += 1
    if "Host" in headers:
        host_line = ""
    else:
        host_line = f"Host: {host}\r\n"
        lines += 1
    fields = "\r\n".join(map(": ".join, headers.items()))
    if fields:
        fields += "\r\n"
    text = f"{method} {target} HTTP/1.1\r\n{host_line}{fields}{extra}\r\n"
    # Every line break is one of ours: a CR or LF inside a value would make more.
    if text.count("\n") != lines or text.count("\r") != lines:
        raise ValueError("line break in the request line or a header")
    return text.encode("utf-8", "surrogateescape"), length


def is_resendable(body: Body) -> bool:
    """Whether the body can be sent again as it was (a stream cannot)."""
    return body is None or isinstance(body, bytes | bytearray | memoryview)
