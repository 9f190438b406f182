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
    """The target's answer is not HTTP/1.1 as it must be, or it breaks a limit."""


class ClientClosed(ClientError):
    """A request on a pool that was closed."""
