"""One access-log line per request, on the ``gatewayd.access`` logger."""

from __future__ import annotations

import logging
import time

from gatewayd.chain.api import RequestContext

log = logging.getLogger("gatewayd.access")


def log_access(ctx: RequestContext, status: int, upstream: str | None) -> None:
    req = ctx.request
    log.info(
        "access",
        extra={
            "request_id": ctx.request_id,
            "client": req.client_ip,
            "method": req.method,
            "path": req.path,
            "route": ctx.route.name,
            "upstream": upstream,
            "target": ctx.target,
            "status": status,
            "bytes_in": ctx.bytes_in,
            "bytes_out": ctx.bytes_out,
            "duration_ms": round((time.monotonic() - ctx.started) * 1000, 3),
        },
    )
