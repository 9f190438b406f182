"""The ``llm_usage`` plugin: a tenant reads its own LLM usage.

Mount it on a route behind ``key_auth`` (or ``jwt_auth``), as the ``events`` plugin gives a
tenant its own event stream::

    - name: my-usage
      match: {path: /v1/usage}
      plugins: [{key_auth: {}}, {llm_usage: {}}]

``GET <the route's path>`` answers what ``GET /_admin/llm/usage`` answers (the same
parameters, see :mod:`gatewayd_llm.usage_api`) for the caller's tenant only
(``principal.tenant``): ``?tenant=`` may name it and no other (403), a caller without a tenant
gets 403, a request no authentication plugin identified gets 401 (``key_auth: {optional:
true}`` lets such a request through). It reads this instance's store
(``<state.dir>/llm/usage.sqlite3``, written by the ``llm`` plugin) in a thread.
"""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import parse_qsl

from pydantic import Field

from gatewayd.chain import Plugin, PluginConfig, PluginContext, RequestContext, Response
from gatewayd_llm.usage import store_path
from gatewayd_llm.usage_query import (
    READERS,
    BadParameter,
    ReadersBusy,
    StoreMissing,
    UsageQuery,
    UsageReaders,
)

__all__ = ["TenantUsageConfig", "TenantUsagePlugin"]


class TenantUsageConfig(PluginConfig):
    max_rows: int = Field(1000, ge=1, le=10_000)  # the most groups ?limit= may ask for


class TenantUsagePlugin(Plugin):
    name: ClassVar[str] = "llm_usage"
    Config = TenantUsageConfig
    priority: ClassVar[int] = 5  # after authentication, ACL and rate limits: it answers itself

    def __init__(self, config: TenantUsageConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.config: TenantUsageConfig = config
        self.path = store_path(context.services.state_dir)
        self.readers: UsageReaders = context.services.stores.shared(READERS, UsageReaders)

    async def on_request(self, ctx: RequestContext) -> Response | None:
        req = ctx.request
        if req.method != "GET":
            return ctx.error_response(
                405, "method_not_allowed", "usage answers GET", {"Allow": "GET"}
            )
        principal = ctx.principal
        if principal is None:
            return ctx.error_response(
                401,
                "unauthorized",
                "usage needs a credential",
                {"WWW-Authenticate": 'Bearer realm="gatewayd"'},
            )
        tenant = principal.tenant
        if not tenant:
            return ctx.error_response(
                403, "tenant_required", "usage needs a tenant-scoped credential"
            )
        params = dict(parse_qsl(req.query_string, keep_blank_values=True))
        if (params.get("tenant") or tenant) != tenant:
            return ctx.error_response(403, "forbidden", "a credential reads its own tenant's usage")
        params["tenant"] = tenant
        try:
            query = UsageQuery.from_params(params, max_rows=self.config.max_rows)
        except BadParameter as exc:
            return ctx.error_response(400, "bad_parameter", str(exc))
        try:
            answer = await self.readers.aggregate(self.path, query)
        except StoreMissing:
            return ctx.error_response(503, "usage_unavailable", "no usage is recorded here")
        except ReadersBusy:
            return ctx.error_response(
                503, "usage_busy", "too many usage queries: try again", {"Retry-After": "1"}
            )
        return Response.json(answer, headers={"Cache-Control": "no-store"})
