"""What an attempt's reply says: a good answer, a reason to try the next deployment, or a
refusal of the request itself."""

from __future__ import annotations

import json
import logging
from typing import Any

from gatewayd.chain import Response

log = logging.getLogger("gatewayd_llm.plugin")

# What a refusal by one deployment says about the others: these statuses (and a context-length
# refusal) mean "try the next one"; any other 4xx is about the request itself.
FALLBACK_STATUSES = frozenset({401, 403, 404, 408, 409, 429})
GATEWAY_CODES = {  # gatewayd's own error codes (ManagedUpstream) as fallback reasons
    "upstream_timeout": "timeout",
    "upstream_unreachable": "connect",
    "upstream_unavailable": "unavailable",
    "upstream_malformed": "malformed",
}


def verdict(reply: Response) -> str | None:
    """None for a good reply; otherwise why the next deployment should be tried (a bounded
    word), or ``request`` when the request itself was refused."""
    status = reply.status
    if status < 300:
        return None
    code = None
    body = reply.body
    if isinstance(body, bytes | bytearray) and body:
        try:
            err = json.loads(body).get("error")
        except (ValueError, AttributeError):
            err = None
        if isinstance(err, dict) and isinstance(err.get("code"), str):
            code = err["code"]
    if code == "context_length_exceeded":
        return "context_length"
    if code in GATEWAY_CODES:
        return GATEWAY_CODES[code]
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth"
    if status >= 500 or status in FALLBACK_STATUSES:
        return f"status_{status}" if status < 500 else f"{status // 100}xx"
    return "request"


async def discard(body: Any) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            log.debug("closing a discarded reply failed", exc_info=True)
