"""``request_counter``: counts the requests a route has served and stamps the count on the
response. It shows every part of the plugin API a typical plugin needs:

- a pydantic config model (unknown keys and bad values are config errors with a path);
- a default priority (higher runs first);
- state that survives reloads through ``context.keep`` (unchanged config = same counter);
- a local reply from ``on_request`` (answer without calling the backend);
- ``on_response`` to change headers, ``on_done`` for accounting that always runs;
- an admin route of its own: ``GET /_admin/plugins/request_counter/counts`` (any admin token).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import Field

from gatewayd.chain import (
    AdminRequest,
    AdminRoute,
    Plugin,
    PluginConfig,
    PluginContext,
    RequestContext,
    Response,
)


class RequestCounterConfig(PluginConfig):
    header: str = "X-Request-Count"
    limit: int | None = Field(None, ge=1, description="answer 429 after this many requests")


@dataclass
class Counter:
    served: int = 0
    done: int = 0


class RequestCounterPlugin(Plugin):
    name = "request_counter"
    Config = RequestCounterConfig
    priority = 500

    def __init__(self, config: RequestCounterConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        # Same place, same config after a reload: the same Counter object comes back.
        self.counter = context.keep("counter", Counter)

    @classmethod
    def admin_routes(cls) -> list[AdminRoute]:
        return [AdminRoute("GET", "/counts", counts, summary="requests served, per route")]

    async def on_request(self, ctx: RequestContext) -> Response | None:
        if self.config.limit is not None and self.counter.served >= self.config.limit:
            return ctx.error_response(429, "too_many", "this route has served its quota")
        self.counter.served += 1
        ctx.state["request_counter.n"] = self.counter.served
        return None

    async def on_response(self, ctx: RequestContext, response: Response) -> None:
        response.headers[self.config.header] = str(ctx.state.get("request_counter.n", 0))

    async def on_done(self, ctx: RequestContext) -> None:
        self.counter.done += 1


async def counts(request: AdminRequest, instances: Sequence[RequestCounterPlugin]) -> Response:
    """``GET /_admin/plugins/request_counter/counts``: the instances are this plugin's in the
    serving generation, one per route (or the global chain) that uses it."""
    return Response.json(
        {
            "counts": [
                {"route": p.context.route, "served": p.counter.served, "done": p.counter.done}
                for p in instances
            ]
        }
    )
