"""The ``llm`` plugin: an OpenAI-compatible endpoint in front of every configured model.

A route ``match: {path: /v1/}`` with ``plugins: [key_auth, llm]`` (no ``upstream``) serves
``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/generate`` (a
prompt in, a completion out) and ``GET /v1/models`` (``/v1/models/<id>``). For a request:

1. read the JSON body (at most ``max_body``) and check it; the ``model`` names one of
   ``models`` (else 404 ``model_not_found``, as OpenAI answers);
2. estimate its tokens and choose the deployments to try (:mod:`gatewayd_llm.router`): the
   model's, then its ``fallbacks``' models', without open breakers and too small context windows;
3. reserve the ``limits`` (429 with ``Retry-After`` when over), and before each deployment its
   own ``limits`` (a deployment over them is skipped);
4. try the deployments in turn through ``PluginContext.forward`` (gatewayd's upstream does the
   rest: the kind, its timeouts, ejection, metrics): on 429, 5xx, a timeout, no connection, a
   provider refusing the gateway's credentials or the model, a context-length refusal, or a
   stream whose first read fails, the next one is tried (each such fallback is counted and
   published as ``llm.fallback``) while no byte has reached the client;
5. answer: the whole reply, or the stream through :class:`gatewayd_llm.stream.StreamRelay`;
6. record the usage exactly once (:mod:`gatewayd_llm.ledger`) and settle the limits.

Every error is OpenAI-shaped (``{"error": {"message", "type", "code", "param"}}``) with the
gateway's request id, gatewayd's own too (``sees_all_replies``: the plugin's ``on_response``
reshapes the refusals of the plugins before it, such as key_auth's 401). Nothing the client sent
as a header (its API key) reaches a provider.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, ClassVar

from multidict import CIMultiDict
from pydantic import BaseModel

from gatewayd.chain import AdminRoute, BodyTooLarge, Plugin, PluginContext, RequestContext, Response
from gatewayd_llm import tokens
from gatewayd_llm.catalog_sync import CatalogSync, catalog_sync, merged
from gatewayd_llm.config import LlmConfig
from gatewayd_llm.endpoints import (
    POST_ENDPOINTS,
    chat_to_generate,
    check_body,
    endpoint_of,
    generate_to_chat,
    model_list,
)
from gatewayd_llm.exchange import EXCHANGE, Exchange
from gatewayd_llm.ledger import LEDGER, Ledger
from gatewayd_llm.limits import (
    LimitExceeded,
    Limits,
    LimitSubject,
    Reservation,
    subject_headers,
)
from gatewayd_llm.metrics import LlmMetrics
from gatewayd_llm.outcomes import discard, verdict
from gatewayd_llm.router import Candidates, Deployment, Router, RouterState
from gatewayd_llm.stream import Ending, StreamRelay, failure_reason, peek
from gatewayd_llm.usage import UsageStore, UsageStoreClosed
from gatewayd_llm.wire import error_body, error_response, json_response, sse_headers

log = logging.getLogger("gatewayd_llm.plugin")

RELAY = "llm.relay"  # ctx.state: the StreamRelay of a streamed answer


class LlmPlugin(Plugin):
    name: ClassVar[str] = "llm"
    Config: ClassVar[type[BaseModel]] = LlmConfig
    priority: ClassVar[int] = 50  # after auth, acl, rate limits and cache: it answers
    # on_response sees every reply of the route, so that the refusals of the plugins before it
    # (key_auth's 401, rate_limit's 429...) are OpenAI-shaped too
    sees_all_replies: ClassVar[bool] = True
    # The operations API (providers, models, usage, the contract): /_admin/llm/...
    admin_path: ClassVar[str] = "/_admin/llm"

    @classmethod
    def admin_routes(cls) -> list[AdminRoute]:
        from gatewayd_llm import catalog_admin, contract, usage_api

        return [*catalog_admin.routes(), *usage_api.routes(), *contract.routes()]

    def __init__(self, config: LlmConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.config: LlmConfig = config  # the YAML's models and the catalog's (use_catalog)
        self.yaml_config = config
        services = context.services
        # The models and providers of /_admin/llm (process-wide); every llm plugin names the
        # same secrets key file, else this refuses the config.
        self.catalog: CatalogSync | None = None
        if config.catalog:
            self.catalog = catalog_sync(services)
            self.catalog.claim(config.secrets_key_file)
        self.catalog_seen = 0  # the catalog's generation self.config has
        self.started = False
        self.router = Router(config, context.keep("router", RouterState))
        self.metrics = LlmMetrics(services.metrics, models=config.models, keep=context.keep)
        self.limits: Limits | None = None
        if config.limits:
            self.limits = Limits(
                config.limits,
                services.stores,
                config.limits_store,
                prefix=f"llm:{context.route or 'global'}",
                on_store_error=config.on_limits_error,
                keep=context.keep,
                logger=log,
            )
        self.deployment_limits: dict[str, Limits] = {}
        for deployments in self.router.models.values():
            for d in deployments:
                if d.config.limits:
                    self.deployment_limits[d.name] = self.own_limits(d)
        # The catalog's deployments' own limits, by deployment and limits (made when first used)
        self.catalog_limits: dict[tuple[str, str], Limits] = {}
        self.usage: UsageStore | None = None
        if config.usage:
            path = Path(services.state_dir) / "llm" / "usage.sqlite3"
            self.usage = context.keep(f"usage:{path}", lambda: UsageStore(path))
        self.tasks: set[asyncio.Task[Any]] = set()
        self.models_reply = json.dumps(model_list(config)).encode()
        if self.catalog is not None and self.catalog.generation:
            self.use_catalog(self.catalog)

    def use_catalog(self, catalog: CatalogSync) -> None:
        """Serve the YAML's models and the catalog's now (its generation moved)."""
        self.catalog_seen = catalog.generation
        config = merged(self.yaml_config, catalog.models)
        router = Router(config, self.router.state, self.router.rng, self.router.clock)
        limits: dict[str, Limits] = {}
        for model, deployments in router.models.items():
            for d in deployments:
                if not d.config.limits:
                    continue
                if model in self.yaml_config.models:
                    limits[d.name] = self.deployment_limits[d.name]
                    continue
                key = (f"{d.config.upstream}/{d.config.model}", repr(d.config.limits))
                found = self.catalog_limits.get(key)
                if found is None:
                    found = self.catalog_limits[key] = self.own_limits(d, keep=False)
                limits[d.name] = found
        self.config, self.router, self.deployment_limits = config, router, limits
        self.metrics.models = frozenset(config.models)
        self.models_reply = json.dumps(model_list(config)).encode()

    def own_limits(self, d: Deployment, keep: bool = True) -> Limits:
        context, config = self.context, self.config
        name = f"{d.config.upstream}/{d.config.model}"

        def keep_in(key: str, factory: Any) -> Any:
            if not keep:  # a catalog deployment: self.catalog_limits keeps it
                return factory()
            return context.keep(f"deployment:{name}:{key}", factory)

        return Limits(
            d.config.limits,
            context.services.stores,
            config.limits_store,
            prefix=f"llm:{context.route or 'global'}:{name}",
            on_store_error=config.on_limits_error,
            keep=keep_in,
            logger=log,
        )

    async def start(self) -> None:
        if self.usage is not None:
            self.usage.path.parent.mkdir(parents=True, exist_ok=True)
            await self.usage.start()
        if self.catalog is not None:
            await self.catalog.start(self.context.services, self.config.rotation_grace)
            self.started = True
            if self.catalog.generation != self.catalog_seen:
                self.use_catalog(self.catalog)

    async def close(self) -> None:
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=5)
        everything = {
            id(x): x for x in [*self.deployment_limits.values(), *self.catalog_limits.values()]
        }
        for limits in [self.limits, *everything.values()]:
            if limits is not None:
                await limits.close()
        if self.catalog is not None and self.started:
            self.started = False
            await self.catalog.stop()

    # -- the phases -------------------------------------------------------------------------

    async def on_request(self, ctx: RequestContext) -> Response | None:
        catalog = self.catalog
        if catalog is not None and catalog.generation != self.catalog_seen:
            self.use_catalog(catalog)
        method = ctx.request.method
        found = endpoint_of(ctx.request.path)
        if found is None:
            return self.error(
                ctx, 404, f"Unknown request URL: {method} {ctx.request.path[:200]}", "unknown_url"
            )
        endpoint, model_id = found
        if endpoint in ("models", "model"):
            if method not in ("GET", "HEAD"):
                return self.not_allowed(ctx, method, "GET")
            return self.models(ctx, model_id)
        if method != "POST":
            return self.not_allowed(ctx, method, "POST")
        return await self.serve(ctx, endpoint)

    def on_response(self, ctx: RequestContext, response: Response) -> None:
        """Give gatewayd's own error bodies on this route (``{"error": {"code", "message",
        "request_id"}}``: another plugin's refusal, an upstream failure) OpenAI's shape."""
        if response.status < 400:
            return
        body = response.body
        if not isinstance(body, bytes | bytearray) or len(body) > 64 * 1024:
            return
        try:
            err = json.loads(body).get("error")
        except (ValueError, AttributeError):
            return
        if not isinstance(err, dict) or "type" in err:
            return  # not gatewayd's, or OpenAI-shaped already
        message = str(err.get("message") or "request failed")[:2000]
        code = err.get("code") if isinstance(err.get("code"), str) else None
        response.body = error_body(message, response.status, code, None, ctx.request_id)
        response.headers["Content-Type"] = "application/json"

    async def on_done(self, ctx: RequestContext) -> None:
        """The last chance to account for a request that ended where nothing else saw it end
        (the client went away between two steps)."""
        relay = ctx.state.get(RELAY)
        if isinstance(relay, StreamRelay):
            await relay.aclose()
        ledger = ctx.state.get(LEDGER)
        if isinstance(ledger, Ledger) and not ledger.done:
            self.finish(ledger, 499, complete=False, cancelled=True)

    # -- local replies ----------------------------------------------------------------------

    def error(
        self,
        ctx: RequestContext,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        type: str | None = None,
    ) -> Response:
        return error_response(status, message, code, param, ctx.request_id, headers, type)

    def not_allowed(self, ctx: RequestContext, method: str, allow: str) -> Response:
        return self.error(
            ctx,
            405,
            f"Method {method} is not allowed here (use {allow})",
            "method_not_allowed",
            headers={"Allow": allow},
        )

    def models(self, ctx: RequestContext, model_id: str | None) -> Response:
        if model_id is None:
            return Response(200, {"Content-Type": "application/json"}, self.models_reply)
        for item in model_list(self.config)["data"]:
            if item["id"] == model_id:
                return json_response(item)
        return self.model_not_found(ctx, model_id)

    def model_not_found(self, ctx: RequestContext, model: str) -> Response:
        return self.error(
            ctx,
            404,
            f"The model `{model[:200]}` does not exist or you do not have access to it.",
            "model_not_found",
            type="invalid_request_error",
        )

    # -- a model request --------------------------------------------------------------------

    async def serve(self, ctx: RequestContext, endpoint: str) -> Response:
        principal = ctx.principal
        operation = POST_ENDPOINTS[endpoint]
        ledger = Ledger(
            ctx.request_id,
            ctx.route.name,
            operation,
            "",
            principal.key_id if principal else None,
            principal.tenant if principal else None,
        )
        ctx.state[LEDGER] = ledger
        reply = await self.prepare(ctx, ledger, endpoint)
        if isinstance(reply, Response):
            self.finish(ledger, reply.status, complete=True)
            return reply
        body, client_usage = reply
        return await self.attempts(ctx, ledger, endpoint, body, client_usage)

    async def prepare(
        self, ctx: RequestContext, ledger: Ledger, endpoint: str
    ) -> Response | tuple[dict[str, Any], bool]:
        """The request body for the providers, and whether the client asked for the usage
        chunk; or the local reply that refuses the request."""
        config = self.config
        try:
            raw = await ctx.read_body(config.max_body)
        except BodyTooLarge as exc:
            return self.error(
                ctx, 413, f"The request body is larger than {exc.limit} bytes", "request_too_large"
            )
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self.error(
                ctx,
                400,
                "We could not parse the JSON body of your request: it must be a JSON"
                " object (see https://platform.openai.com/docs/api-reference)",
                "invalid_json",
            )
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self.error(ctx, 400, "you must provide a model parameter", None, "model")
        ledger.model = model[:200]
        problem = check_body(endpoint, body)
        if problem is not None:
            return self.error(ctx, 400, problem[0], "invalid_request", problem[1])
        if model not in config.models:
            return self.model_not_found(ctx, model)
        if endpoint == "generate":
            body = generate_to_chat(body)
        operation = ledger.operation
        stream = bool(body.get("stream")) and operation != "embeddings"
        ledger.stream = stream
        client_usage = False
        if stream:
            options = body.get("stream_options")
            options = dict(options) if isinstance(options, dict) else {}
            client_usage = bool(options.get("include_usage"))
            options["include_usage"] = True  # the gateway always asks for usage
            body["stream_options"] = options
        else:
            body.pop("stream_options", None)
            if operation == "embeddings":
                body.pop("stream", None)
        ledger.prompt_estimate = tokens.prompt_tokens(operation, body)
        return body, client_usage

    async def attempts(
        self,
        ctx: RequestContext,
        ledger: Ledger,
        endpoint: str,
        body: dict[str, Any],
        client_usage: bool,
    ) -> Response:
        config = self.config
        model = ledger.model
        need = ledger.prompt_estimate + tokens.max_output_tokens(
            ledger.operation, body, config.default_max_tokens
        )
        candidates = self.router.candidates(model, need)
        if not candidates.order:
            refusal = self.no_candidate(ctx, candidates, need)
            self.finish(ledger, refusal.status, complete=True)
            return refusal
        refused = await self.reserve(ctx, ledger, need)
        if refused is not None:
            self.finish(ledger, refused.status, complete=True)
            return refused
        order = candidates.order[: config.max_attempts]
        last: Response | None = None
        over: list[float] = []  # retry-after of the deployments skipped for their own limits
        for i, deployment in enumerate(order):
            if deployment.name in self.deployment_limits:
                retry = await self.hold(ctx, ledger, deployment, need)
                if retry is not None:
                    over.append(retry)
                    continue
            exchange = Exchange(
                ledger.operation,
                {**body, "model": deployment.config.model},
                deployment.model,
                deployment.name,
                request_id=ctx.request_id,
            )
            ctx.state[EXCHANGE] = exchange
            ctx.use_upstream(deployment.upstream)
            ledger.attempt(deployment, exchange)
            self.router.begin(deployment)
            reply: Response | None = None
            try:
                waiting = time.monotonic()
                reply = await self.context.forward(ctx)
                reason = verdict(reply)
                if reason is None and ledger.stream and not isinstance(reply.body, bytes):
                    peeked = await peek(reply.body)
                    ledger.provider_wait += time.monotonic() - waiting
                    if peeked.error is not None:
                        await discard(reply.body)
                        reason = failure_reason(peeked.error)
                        reply = self.stream_error(ctx, peeked.error)
                    else:
                        assert peeked.first is not None
                        return self.streamed(
                            ctx, ledger, deployment, reply, peeked.first, client_usage
                        )
                else:
                    ledger.provider_wait += time.monotonic() - waiting
            except BaseException as exc:
                # The client went away (or something broke): nothing more for this request.
                self.router.end(deployment)
                self.router.abandon(deployment)
                if reply is not None:
                    await discard(reply.body)
                gone = isinstance(exc, asyncio.CancelledError)
                self.finish(ledger, 499 if gone else 500, complete=False, cancelled=gone)
                raise
            self.router.end(deployment)
            if reason is None:
                self.router.success(deployment)
                return self.whole(ctx, ledger, endpoint, reply)
            await discard(reply.body)
            if reason != "context_length":
                self.router.failure(deployment)
            last = reply
            if reason == "request":
                break  # the request itself is refused: another deployment would refuse it too
            nxt = order[i + 1] if i + 1 < len(order) else None
            if nxt is None:
                self.metrics.error(model, reason)
                break
            self.fallback(ctx, ledger, deployment, nxt, reason)
        if last is None:  # every deployment is over its own limits
            retry_after = str(max(1, math.ceil(min(over))))
            reply = self.error(
                ctx,
                429,
                "Every deployment of this model is over its limits; retry later",
                "rate_limit_exceeded",
                headers={"Retry-After": retry_after},
                type="rate_limit_error",
            )
            self.metrics.error(model, "limited")
            self.finish(ledger, 429, complete=True)
            return reply
        reply = self.openai_error(ctx, last)
        if reply.status in (401, 403):  # the provider refused the gateway, not the client
            message = json.loads(reply.body)["error"]["message"]  # type: ignore[arg-type]
            reply = self.error(ctx, 502, message, "upstream_auth_failed")
        self.finish(ledger, reply.status, complete=True)
        return reply

    def no_candidate(self, ctx: RequestContext, candidates: Candidates, need: int) -> Response:
        if candidates.too_small and not candidates.open_breakers:
            window = candidates.largest_window
            return self.error(
                ctx,
                400,
                f"This model's maximum context length is {window} tokens; the request"
                f" needs about {need} (prompt and max_tokens)",
                "context_length_exceeded",
                "messages",
            )
        retry = max(1, math.ceil(candidates.retry_after))
        return self.error(
            ctx,
            503,
            "No deployment of this model is available now; retry later",
            "model_unavailable",
            headers={"Retry-After": str(retry)},
        )

    async def reserve(self, ctx: RequestContext, ledger: Ledger, need: int) -> Response | None:
        limits = self.limits
        if limits is None:
            return None
        price = self.config.price(ledger.model, None)
        estimate = price.cost(ledger.prompt_estimate, need - ledger.prompt_estimate) if price else 0
        try:
            ledger.reservation = await limits.reserve(
                self.subject(ctx, ledger, limits), need, estimate
            )
        except LimitExceeded as exc:
            self.metrics.error(ledger.model, "limited" if exc.status == 429 else "limits_store")
            retry = str(max(1, math.ceil(exc.retry_after)))
            return self.error(
                ctx,
                exc.status,
                exc.message,
                exc.code,
                headers={"Retry-After": retry},
                type="rate_limit_error" if exc.status == 429 else None,
            )
        return None

    async def hold(
        self, ctx: RequestContext, ledger: Ledger, deployment: Deployment, need: int
    ) -> float | None:
        """Reserve ``deployment``'s own limits; the seconds until it may be tried when over."""
        limits = self.deployment_limits[deployment.name]
        price = self.config.price(deployment.model, deployment.config)
        estimate = price.cost(ledger.prompt_estimate, need - ledger.prompt_estimate) if price else 0
        try:
            reservation = await limits.reserve(self.subject(ctx, ledger, limits), need, estimate)
        except LimitExceeded as exc:
            return exc.retry_after
        ledger.holds.append((limits, reservation, deployment.name))
        return None

    def subject(self, ctx: RequestContext, ledger: Ledger, limits: Limits) -> LimitSubject:
        return LimitSubject(
            ledger.key_id,
            ledger.tenant,
            ledger.model,
            ctx.route.name,
            subject_headers(ctx.request.headers, limits.specs),
        )

    def fallback(
        self,
        ctx: RequestContext,
        ledger: Ledger,
        failed: Deployment,
        nxt: Deployment,
        reason: str,
    ) -> None:
        self.metrics.fallback(failed.model, reason)
        payload = {
            "request_id": ctx.request_id,
            "route": ctx.route.name,
            "model": ledger.model,
            "from": failed.name,
            "to": nxt.name,
            "reason": reason,
            "attempt": ledger.attempts,
        }
        log.info("llm fallback", extra=payload)
        try:
            self.context.services.events.publish("llm.fallback", payload, tenant=ledger.tenant)
        except Exception:
            log.exception("publishing llm.fallback failed")

    # -- answers ----------------------------------------------------------------------------

    def whole(
        self, ctx: RequestContext, ledger: Ledger, endpoint: str, reply: Response
    ) -> Response:
        body = reply.body
        assert isinstance(body, bytes | bytearray)
        if endpoint == "generate":
            body = chat_to_generate(bytes(body))
        headers = CIMultiDict({"Content-Type": "application/json"})
        self.served_headers(headers, ledger)
        exchange = ledger.exchange
        estimate = 0
        if exchange is not None and exchange.usage is None:  # the provider did not say
            estimate = tokens.answer_tokens(reply.body)
        self.finish(ledger, 200, complete=True, relayed=estimate)
        return Response(200, headers, bytes(body))

    def streamed(
        self,
        ctx: RequestContext,
        ledger: Ledger,
        deployment: Deployment,
        reply: Response,
        first: bytes,
        client_usage: bool,
    ) -> Response:
        body = reply.body
        assert not isinstance(body, bytes | bytearray)
        self.router.success(deployment)

        def ended(how: Ending, reason: str | None, relayed: int) -> None:
            self.router.end(deployment)
            if how == "failed":
                self.router.failure(deployment)
                self.metrics.error(ledger.model, reason or "error")
            status = {"complete": 200, "failed": 502, "cancelled": 499}[how]
            ledger.provider_wait += relay.waited
            self.finish(
                ledger,
                status,
                complete=how == "complete",
                cancelled=how == "cancelled",
                relayed=relayed,
            )

        relay = StreamRelay(
            first, body, include_usage=client_usage, request_id=ctx.request_id, on_end=ended
        )
        ctx.state[RELAY] = relay
        headers = sse_headers()
        self.served_headers(headers, ledger)
        return Response(200, headers, relay)

    def served_headers(self, headers: CIMultiDict[str], ledger: Ledger) -> None:
        if ledger.deployment is not None:
            headers["X-LLM-Model"] = ledger.deployment.model
        headers["X-LLM-Fallbacks"] = str(ledger.fallbacks)

    def stream_error(self, ctx: RequestContext, exc: BaseException) -> Response:
        """The reply that stands for a stream whose first read failed (if it is the last)."""
        reason = failure_reason(exc)
        status = 504 if reason in ("stall", "timeout") else 502
        message = getattr(exc, "message", None) or "the provider's stream failed"
        return self.error(ctx, status, str(message), f"stream_{reason}")

    def openai_error(self, ctx: RequestContext, reply: Response) -> Response:
        """An error reply (the kind's, OpenAI-shaped, or gatewayd's own) as the client gets
        it: OpenAI's shape, this request's id, ``Retry-After`` kept."""
        status = reply.status if reply.status >= 400 else 502
        message, code, param, type_ = f"upstream failed ({status})", None, None, None
        body = reply.body
        if isinstance(body, bytes | bytearray):
            try:
                err = json.loads(body).get("error")
            except (ValueError, AttributeError):
                err = None
            if isinstance(err, dict):
                message = str(err.get("message") or message)[:2000]
                code = err.get("code") if isinstance(err.get("code"), str) else None
                param = err.get("param") if isinstance(err.get("param"), str) else None
                type_ = err.get("type") if isinstance(err.get("type"), str) else None
        headers = {}
        retry = reply.headers.get("Retry-After")
        if retry is not None:
            headers["Retry-After"] = retry
        return self.error(ctx, status, message, code, param, headers, type_)

    # -- accounting -------------------------------------------------------------------------

    def finish(
        self,
        ledger: Ledger,
        status: int,
        *,
        complete: bool,
        cancelled: bool = False,
        relayed: int = 0,
    ) -> None:
        """The request's one usage record: to the store and the metrics; the limits settled."""
        deployment = ledger.deployment
        price = self.config.price(
            ledger.model if deployment is None else deployment.model,
            deployment.config if deployment else None,
        )
        rec = ledger.finish(
            status,
            complete=complete,
            cancelled=cancelled,
            relayed=relayed,
            price=price.cost if price is not None else None,
        )
        if rec is None:
            return  # finished already
        overhead = max(0.0, rec.duration_ms / 1000 - ledger.provider_wait)
        try:
            self.metrics.record(rec, rec.upstream or "none", overhead, ledger.operation)
        except Exception:
            log.exception("llm metrics failed", extra={"request_id": rec.request_id})
        usage = self.usage
        if usage is not None:
            try:
                usage.record(rec)
            except UsageStoreClosed:
                log.warning("usage store closed: record lost", extra={"request_id": rec.request_id})
        settles: list[tuple[Limits, Reservation, int, float]] = []
        if self.limits is not None and ledger.reservation is not None:
            settles.append((self.limits, ledger.reservation, rec.total_tokens, rec.cost))
        for limits, reservation, name in ledger.holds:  # a failed attempt used no tokens
            used = name == rec.deployment
            settles.append(
                (limits, reservation, rec.total_tokens if used else 0, rec.cost if used else 0.0)
            )
        for limits, reservation, used_tokens, cost in settles:
            task = asyncio.get_running_loop().create_task(
                limits.settle(reservation, used_tokens, cost)
            )
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
