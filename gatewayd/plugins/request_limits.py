"""``request_limits``: cap the body size (413, without reading the rest) and header size (431)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from gatewayd.chain import BodyTooLarge, Plugin, PluginConfig, RequestContext, Response, Size


class RequestLimitsConfig(PluginConfig):
    max_body: Size | None = None
    max_header_size: Size | None = None  # all header names and values together
    max_headers: int | None = None


class RequestLimitsPlugin(Plugin):
    name = "request_limits"
    Config = RequestLimitsConfig
    priority = 2000  # before authentication: refuse what is too big before any work

    def on_request(self, ctx: RequestContext) -> Response | None:
        cfg: RequestLimitsConfig = self.config
        req = ctx.request
        if cfg.max_headers is not None and len(req.headers) > cfg.max_headers:
            return ctx.error_response(
                431, "headers_too_large", f"more than {cfg.max_headers} header fields"
            )
        if cfg.max_header_size is not None:
            size = sum(len(k) + len(v) + 4 for k, v in req.headers.items())
            if size > cfg.max_header_size:
                return ctx.error_response(
                    431, "headers_too_large", f"headers exceed {cfg.max_header_size} bytes"
                )
        limit = cfg.max_body
        if limit is None or req.body is None:
            return None
        if req.content_length is not None and req.content_length > limit:
            return too_large(ctx, limit)
        if isinstance(req.body, bytes):
            return too_large(ctx, limit) if len(req.body) > limit else None
        req.body = _capped(ctx, req.body, limit)
        return None


def too_large(ctx: RequestContext, limit: int) -> Response:
    reply = ctx.error_response(413, "body_too_large", f"request body exceeds {limit} bytes")
    reply.headers["Connection"] = "close"
    return reply


async def _capped(
    ctx: RequestContext, body: AsyncIterator[bytes], limit: int
) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in body:
        seen += len(chunk)
        if seen > limit:
            ctx.error = BodyTooLarge(limit)
            raise ctx.error
        yield chunk
