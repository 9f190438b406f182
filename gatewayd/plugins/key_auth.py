"""``key_auth``: API keys from the key store (``gatewayd keys create``).

The key comes from ``Authorization: Bearer <key>`` (default), another header (``header:
X-API-Key``, where the value is the key itself) or a query parameter (``query: api_key``).
Missing, malformed, unknown, wrong, expired and revoked keys all get 401 with
``WWW-Authenticate``. A good key authenticates the request through ``ctx.authenticate``
(principal kind ``key``, subject and key id = the key id, the key's tenant and scopes), is
removed from the upstream request (``hide_credentials``) and is described to the backend with
``X-Gateway-*`` headers (``forward_headers``). On a request an earlier auth plugin already
authenticated, key_auth does nothing (first authenticator wins) except remove its own
credential (``hide_credentials``). Verification is the key store's: cached, bcrypt off the
event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from gatewayd.chain import Plugin, PluginConfig, PluginError, Principal, RequestContext, Response
from gatewayd.plugins.identity import take_credential, unauthorized


class KeyAuthConfig(PluginConfig):
    header: str = "Authorization"
    query: str | None = None
    realm: str = "gatewayd"
    hide_credentials: bool = True
    forward_headers: bool = True
    optional: bool = False  # no key at all: go on without a principal (for a later plugin)


class KeyAuthPlugin(Plugin):
    name = "key_auth"
    Config = KeyAuthConfig
    priority = 1250

    def _presented(self, ctx: RequestContext) -> str | None:
        cfg = self.config
        return take_credential(ctx.request, cfg.header, cfg.query, cfg.hide_credentials)

    def on_request(self, ctx: RequestContext) -> Response | Awaitable[Response | None] | None:
        """A key verified recently is admitted at once, without a coroutine; any other key is
        handed to :meth:`_verify`, a coroutine the chain awaits (store lookup, bcrypt)."""
        cfg: KeyAuthConfig = self.config
        if ctx.principal is not None:  # first authenticator wins: leave this request alone
            if cfg.hide_credentials:
                self._presented(ctx)  # ... but a key is still never forwarded
            return None
        presented = self._presented(ctx)
        if presented is None:
            if cfg.optional:
                return None
            return unauthorized(ctx, cfg.realm, "an API key is required", error=None)
        keys = self.context.services.keys if self.context.services is not None else None
        if keys is None:
            raise PluginError(500, "key_store_unavailable", "the key store is not available")
        record = keys.cached(presented)
        if record is None:
            return self._verify(ctx, keys, presented)
        self._admit(ctx, record)
        return None

    async def _verify(self, ctx: RequestContext, keys: Any, presented: str) -> Response | None:
        record = await keys.verify(presented)
        if record is None:
            return unauthorized(ctx, self.config.realm, "invalid, expired or revoked API key")
        self._admit(ctx, record)
        return None

    def _admit(self, ctx: RequestContext, record: Any) -> None:
        principal = Principal(
            kind="key",
            subject=record.key_id,
            tenant=record.tenant,
            key_id=record.key_id,
            scopes=record.scopes,
        )
        ctx.authenticate(principal, self.config.forward_headers)
