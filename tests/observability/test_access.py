"""The access log line (gatewayd/observability/access.py): the caller's tenant and key id, in
both formats, escaped; nothing of the credential."""

from __future__ import annotations

import io
import json

from multidict import CIMultiDict

from gatewayd.chain.api import Principal, Request, RequestContext, RouteInfo
from gatewayd.observability.access import AccessLog


def context(principal: Principal | None) -> RequestContext:
    headers = CIMultiDict({"Authorization": "Bearer sk_live_secret"})
    request = Request("GET", "/p", "", headers, "gw", "http", "192.0.2.7", None, None)
    ctx = RequestContext(request, "0" * 32, RouteInfo("api", "api", "/"))
    if principal is not None:
        ctx.authenticate(principal)
    return ctx


async def lines(fmt: str, principal: Principal | None) -> str:
    stream = io.StringIO()
    log = AccessLog(fmt, stream)
    log.record(context(principal), 200, "api")
    log.flush()
    return stream.getvalue()


async def test_json_lines_name_the_tenant_and_the_key_id() -> None:
    caller = Principal("key", subject="k1", tenant='ac"me', key_id="k1")
    out = await lines("json", caller)
    entry = json.loads(out)
    assert entry["tenant"] == 'ac"me'
    assert entry["key_id"] == "k1"
    assert "secret" not in out
    anonymous = json.loads(await lines("json", None))
    assert anonymous["tenant"] is None and anonymous["key_id"] is None


async def test_text_lines_name_the_tenant_and_the_key_id() -> None:
    out = await lines("text", Principal("jwt", subject="u", tenant="acme corp", key_id=None))
    assert ' tenant="acme corp" key_id=- ' in out
    assert "secret" not in out
    out = await lines("text", None)
    assert " tenant=- key_id=- " in out
