"""What can go wrong talking to a target, each mixing in the builtin it specialises (as aiohttp's
``ClientOSError(..., OSError)`` does), so a caller may catch either."""

from __future__ import annotations


class ClientError(Exception):
    """The exchange with the target failed (the forwarder answers 502)."""


class ConnectError(ClientError, OSError):
    """The target could not be reached: refused, unreachable, unknown host, TLS handshake."""


class ConnectTimeout(ClientError, TimeoutError):
    """No connection (or pool slot) within the connect timeout."""


class Disconnected(ClientError, ConnectionError):
    """The connection was lost (or given up) before the response was read to its end."""


class MalformedResponse(ClientError):
    """The target's answer is not HTTP/1.1 as it must be, or it breaks a limit: a framing
    error (a bad status line, a head over the limits, ``Content-Length`` with
    ``Transfer-Encoding`` or twice, a bad chunk)."""


class Truncated(MalformedResponse, Disconnected):
    """The target closed the connection before the end its framing announced (fewer bytes
    than its ``Content-Length``, no last chunk)."""


class StaleBytes(MalformedResponse):
    """A reused connection answered with bytes that are no response: what the previous
    response sent past its end. The request is sent again on a fresh connection when that is
    safe (as for a connection found closed)."""


class ClientClosed(ClientError):
    """A request on a pool that was closed."""
