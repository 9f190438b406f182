"""The chain runner: a chain's phases for one request, the same for the daemon and the tests.

The daemon's dispatcher and ``gatewayd.testing.PluginHarness`` both run a request through these
three functions (one request path, one set of rules):

1. :func:`run_request`: ``on_request`` in chain order. A plugin's local reply stops the chain;
   ``seen`` is the position of the last plugin that saw the request.
2. :func:`run_response`: ``on_response`` in reverse order over the plugins that saw the request
   (and those that see every reply: ``sees_all_replies``), then the chunk phase wraps the body
   (``on_response_chunk``, reverse order, per chunk, over the plugins that saw the request).
3. :func:`run_done`: ``on_done`` in reverse order over the same plugins; always run, whatever
   happened (a failure is logged and the others still run).

Plugins fail closed: an exception in ``on_request`` or ``on_response`` becomes the reply
(:func:`failure_response`: a :class:`PluginError`'s own status, else 500 ``plugin_error``, logged
with its traceback); an ``on_response`` failure also stops the response phases. No failure ever
lets a request through that a plugin meant to stop.

Fast path: a phase that is a plain function (not ``async def``) is called without a coroutine, as
:class:`~gatewayd.chain.builder.Chain` records per phase (``awaits``); a plain ``on_request`` may
still return a coroutine for its slow path, which is awaited. Each failure is logged on the
``gatewayd.chain`` logger with ``plugin``, ``phase``, ``request_id`` and ``route`` fields.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from types import CoroutineType

from gatewayd.chain.api import Body, PluginError, RequestContext, Response
from gatewayd.chain.builder import Chain

__all__ = ["chunked", "failure_response", "run_done", "run_request", "run_response"]

log = logging.getLogger("gatewayd.chain")


def _log_failure(ctx: RequestContext, plugin: str, phase: str, exc: BaseException) -> None:
    log.error(
        "plugin %s failed in %s",
        plugin,
        phase,
        exc_info=exc,
        extra={
            "plugin": plugin,
            "phase": phase,
            "request_id": ctx.request_id,
            "route": ctx.route.name,
        },
    )


def failure_response(
    ctx: RequestContext, plugin: str, exc: BaseException, phase: str = "on_request"
) -> Response:
    """The reply for a plugin that raised: a :class:`PluginError` answers with its own status
    and code (not logged: it is the plugin's answer); anything else is logged with its
    traceback and answers 500 ``plugin_error`` (the message names the plugin, never the
    exception's text, which may hold a secret)."""
    if isinstance(exc, PluginError):
        return ctx.error_response(exc.status, exc.code, exc.message, exc.headers)
    _log_failure(ctx, plugin, phase, exc)
    return ctx.error_response(500, "plugin_error", f"plugin '{plugin}' failed")


async def run_request(chain: Chain, ctx: RequestContext) -> tuple[Response | None, int]:
    """Run ``on_request`` in order. Returns the local reply (or None: forward the request) and
    ``seen``, the position of the last plugin that saw the request (the later phases run over
    the positions up to it)."""
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
    """Run ``on_response`` in reverse order over the plugins that saw the request (and those that
    see every reply, ``Chain.all_replies``), then wrap the body in the chunk phase. Returns the
    reply to send: ``response`` (changed in place by the plugins), or the failure reply of a
    plugin that raised (the remaining response phases and the chunk phase are then skipped)."""
    for pos, name, fn, awaited in chain.response:
        if pos > seen and pos not in chain.all_replies:
            continue
        try:
            result = fn(ctx, response)
            if awaited:
                await result
        except Exception as exc:
            return failure_response(ctx, name, exc, "on_response")
    if chain.chunk:
        response.body = chunked(chain, ctx, response.body, seen)
    return response


async def chunked(chain: Chain, ctx: RequestContext, body: Body, seen: int) -> AsyncIterator[bytes]:
    """``body`` with each chunk passed through ``on_response_chunk`` (reverse order, plugins
    that saw the request). A bytes body is one chunk. The source is closed when this is."""
    fns = [fn for pos, _, fn, _ in chain.chunk if pos <= seen]
    if isinstance(body, bytes | bytearray):
        data = bytes(body)
        for fn in fns:
            data = fn(ctx, data)
        yield data
        return
    try:
        async for chunk in body:
            for fn in fns:
                chunk = fn(ctx, chunk)
            yield chunk
    finally:
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()


async def run_done(chain: Chain, ctx: RequestContext, seen: int) -> None:
    """Run ``on_done`` in reverse order over the plugins that saw the request. A failure is
    logged (``plugin``, ``phase``, ``request_id``) and the other plugins still run."""
    for pos, name, fn, awaited in chain.done:
        if pos > seen:
            continue
        try:
            result = fn(ctx)
            if awaited:
                await result
        except Exception as exc:
            _log_failure(ctx, name, "on_done", exc)
