"""Running a chain's phases for one request. Plugins fail closed."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from types import CoroutineType

from gatewayd.chain.api import PluginError, RequestContext, Response
from gatewayd.chain.builder import Chain

log = logging.getLogger("gatewayd.chain")


def failure_response(ctx: RequestContext, plugin: str, exc: BaseException) -> Response:
    if isinstance(exc, PluginError):
        return ctx.error_response(exc.status, exc.code, exc.message, exc.headers)
    log.error(
        "plugin failed",
        exc_info=exc,
        extra={"plugin": plugin, "request_id": ctx.request_id, "route": ctx.route.name},
    )
    return ctx.error_response(500, "plugin_error", f"plugin '{plugin}' failed")


async def run_request(chain: Chain, ctx: RequestContext) -> tuple[Response | None, int]:
    """Run ``on_request`` in order. Returns a local reply (or None) and the position of the last
    plugin that saw the request (response phases run over positions up to it)."""
    for pos, name, fn, awaited in chain.request:
        try:
            reply = fn(ctx)
            if awaited or reply.__class__ is CoroutineType:
                reply = await reply  # a plain method may finish in a coroutine
        except Exception as exc:
            return failure_response(ctx, name, exc), pos
        if reply is not None:
            return reply, pos
    return None, len(chain.plugins) - 1


async def run_response(
    chain: Chain, ctx: RequestContext, response: Response, seen: int
) -> Response:
    for pos, name, fn, awaited in chain.response:
        if pos > seen:
            continue
        try:
            result = fn(ctx, response)
            if awaited:
                await result
        except Exception as exc:
            return failure_response(ctx, name, exc)
    if chain.chunk:
        response.body = chunked(chain, ctx, response.body, seen)
    return response


async def chunked(
    chain: Chain, ctx: RequestContext, body: bytes | AsyncIterator[bytes], seen: int
) -> AsyncIterator[bytes]:
    fns = [(n, fn) for pos, n, fn, _ in chain.chunk if pos <= seen]
    if isinstance(body, bytes):
        for _, fn in fns:
            body = fn(ctx, body)
        yield body
        return
    async for chunk in body:
        for _, fn in fns:
            chunk = fn(ctx, chunk)
        yield chunk


async def run_done(chain: Chain, ctx: RequestContext, seen: int) -> None:
    for pos, name, fn, awaited in chain.done:
        if pos > seen:
            continue
        try:
            result = fn(ctx)
            if awaited:
                await result
        except Exception:
            log.exception(
                "plugin on_done failed", extra={"plugin": name, "request_id": ctx.request_id}
            )
