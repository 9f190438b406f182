"""``cors``: answer preflights at the gateway and add CORS headers to allowed origins' replies.

``origins`` is an allow-list of exact origins or globs (``https://*.example.com``; ``*`` in a
glob matches host characters only, never ``/``); ``["*"]`` allows any origin. A preflight
(``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered here: 204 with
the allow headers, or 403 for an origin or method not allowed; it never reaches the backend.
Other requests pass; replies to allowed origins get ``Access-Control-Allow-Origin`` (the origin
itself, or ``*`` when any origin is allowed and ``credentials`` is off), ``Vary: Origin``,
``Access-Control-Allow-Credentials`` and ``Access-Control-Expose-Headers``.
"""

from __future__ import annotations

import re

from pydantic import field_validator

from gatewayd.chain import Duration, Plugin, PluginConfig, RequestContext, Response

DEFAULT_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


class CorsConfig(PluginConfig):
    origins: list[str] = ["*"]
    methods: list[str] = DEFAULT_METHODS
    headers: list[str] | None = None  # None: allow what the preflight asks for
    expose_headers: list[str] = []
    credentials: bool = False
    max_age: Duration = 600.0

    @field_validator("methods")
    @classmethod
    def _upper(cls, v: list[str]) -> list[str]:
        return [m.upper() for m in v]


def origin_pattern(glob: str) -> re.Pattern[str]:
    parts = [re.escape(p) for p in glob.lower().split("*")]
    return re.compile("[a-z0-9.-]*".join(parts))


class CorsPlugin(Plugin):
    name = "cors"
    Config = CorsConfig
    priority = 2100  # before authentication: preflights carry no credentials

    def __init__(self, config: CorsConfig, context: object) -> None:
        super().__init__(config, context)  # type: ignore[arg-type]
        self.any_origin = "*" in config.origins
        self.patterns = [origin_pattern(o) for o in config.origins if o != "*"]
        self.methods = ", ".join(config.methods)
        self.method_set = frozenset(config.methods)

    def allowed(self, origin: str) -> bool:
        if self.any_origin:
            return True
        o = origin.lower()
        return any(p.fullmatch(o) for p in self.patterns)

    def _allow_origin(self, origin: str) -> str:
        return "*" if self.any_origin and not self.config.credentials else origin

    def on_request(self, ctx: RequestContext) -> Response | None:
        req = ctx.request
        origin = req.headers.get("Origin")
        if origin is None:
            return None
        wanted = req.headers.get("Access-Control-Request-Method")
        if req.method == "OPTIONS" and wanted is not None:
            return self.preflight(ctx, origin, wanted.strip().upper())
        if self.allowed(origin):
            ctx.state["cors_origin"] = origin
        return None

    def preflight(self, ctx: RequestContext, origin: str, wanted: str) -> Response:
        cfg: CorsConfig = self.config
        if not self.allowed(origin):
            return ctx.error_response(403, "cors_denied", "origin not allowed", {"Vary": "Origin"})
        if wanted not in self.method_set:
            return ctx.error_response(403, "cors_denied", f"method {wanted} not allowed")
        headers = {
            "Access-Control-Allow-Origin": self._allow_origin(origin),
            "Access-Control-Allow-Methods": self.methods,
            "Access-Control-Max-Age": str(int(cfg.max_age)),
            "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        }
        asked = ctx.request.headers.get("Access-Control-Request-Headers")
        if cfg.headers is not None:
            headers["Access-Control-Allow-Headers"] = ", ".join(cfg.headers)
        elif asked:
            headers["Access-Control-Allow-Headers"] = asked
        if cfg.credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        return Response(204, headers)

    def on_response(self, ctx: RequestContext, response: Response) -> None:
        origin = ctx.state.get("cors_origin")
        if origin is None:
            return
        cfg: CorsConfig = self.config
        h = response.headers
        h["Access-Control-Allow-Origin"] = self._allow_origin(origin)
        vary = h.get("Vary")
        if not vary:
            h["Vary"] = "Origin"
        elif "origin" not in vary.lower():
            h["Vary"] = f"{vary}, Origin"
        if cfg.credentials:
            h["Access-Control-Allow-Credentials"] = "true"
        if cfg.expose_headers:
            h["Access-Control-Expose-Headers"] = ", ".join(cfg.expose_headers)
