"""The forwarder's HTTP/1.1 client: llhttp (through httptools, as uvicorn's server uses it) on
asyncio protocols, with a connection pool per upstream. What it sends is what it was given
(:mod:`.head`), what it returns is what the target said (:mod:`.protocol`), and a stale pooled
connection is retried only when that is safe (:mod:`.pool`)."""

from gatewayd.proxy.h1.errors import (
    ClientClosed,
    ClientError,
    ConnectError,
    ConnectTimeout,
    Disconnected,
    MalformedResponse,
    StaleBytes,
    Truncated,
)
from gatewayd.proxy.h1.head import Body
from gatewayd.proxy.h1.pool import Origin, Pool
from gatewayd.proxy.h1.response import Response

__all__ = [
    "Body",
    "ClientClosed",
    "ClientError",
    "ConnectError",
    "ConnectTimeout",
    "Disconnected",
    "MalformedResponse",
    "Origin",
    "Pool",
    "Response",
    "StaleBytes",
    "Truncated",
]
