"""``webhook_signature``: only signed webhooks reach the backend (Telegram, GitHub, Stripe, HMAC).

- ``telegram``: ``X-Telegram-Bot-Api-Secret-Token`` equals ``secret_token``.
- ``github``: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``.
- ``stripe``: ``Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` (any of
  several ``v1``), with ``t`` within ``tolerance`` of now (replays are refused).
- ``hmac``: a generic HMAC of the body in ``header`` (``algorithm`` sha1/sha256/sha512,
  ``encoding`` hex/base64, optional ``prefix`` such as ``sha256=``).

The body is read up to ``max_body`` (413 beyond), verified, and forwarded byte for byte. All
comparisons are constant-time. A bad or missing signature is 401; the secret is never echoed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from typing import Literal

from pydantic import Field, model_validator

from gatewayd.chain import Duration, Plugin, PluginConfig, RequestContext, Response, Size


class WebhookSignatureConfig(PluginConfig):
    provider: Literal["telegram", "github", "stripe", "hmac"]
    secret: str | None = Field(None, repr=False)
    secret_token: str | None = Field(None, repr=False)
    header: str | None = None
    algorithm: Literal["sha1", "sha256", "sha512"] = "sha256"
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = ""
    tolerance: Duration = 300.0
    max_body: Size = 1024 * 1024

    @model_validator(mode="after")
    def _needs(self) -> WebhookSignatureConfig:
        if self.provider == "telegram":
            if not self.secret_token:
                raise ValueError("provider telegram needs 'secret_token'")
        elif not self.secret:
            raise ValueError(f"provider {self.provider} needs 'secret'")
        if self.provider == "hmac" and not self.header:
            raise ValueError("provider hmac needs 'header' (e.g. X-Signature)")
        return self


def _mac(secret: str, data: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(secret.encode(), data, getattr(hashlib, algorithm)).digest()


def _eq(a: str | bytes, b: str | bytes) -> bool:
    a = a.encode() if isinstance(a, str) else a
    b = b.encode() if isinstance(b, str) else b
    return hmac.compare_digest(a, b)


class WebhookSignaturePlugin(Plugin):
    name = "webhook_signature"
    Config = WebhookSignatureConfig
    priority = 1500  # before the auth plugins: a webhook carries a signature, not a key

    def deny(self, ctx: RequestContext, message: str) -> Response:
        return ctx.error_response(
            401, "invalid_signature", message, {"WWW-Authenticate": 'Signature realm="gatewayd"'}
        )

    async def on_request(self, ctx: RequestContext) -> Response | None:
        cfg: WebhookSignatureConfig = self.config
        headers = ctx.request.headers
        if cfg.provider == "telegram":
            given = headers.get("X-Telegram-Bot-Api-Secret-Token", "")
            assert cfg.secret_token is not None
            return (
                None
                if given and _eq(given, cfg.secret_token)
                else self.deny(ctx, "bad secret token")
            )
        header = {"github": "X-Hub-Signature-256", "stripe": "Stripe-Signature"}.get(
            cfg.provider, cfg.header or ""
        )
        signature = headers.get(header)
        if not signature:
            return self.deny(ctx, f"missing {header} header")
        body = await ctx.read_body(cfg.max_body)  # BodyTooLarge -> 413
        assert cfg.secret is not None
        if cfg.provider == "github":
            want = "sha256=" + _mac(cfg.secret, body).hex()
            ok = _eq(signature.strip(), want)
        elif cfg.provider == "stripe":
            ok = self._stripe(signature, body, cfg.secret)
        else:
            ok = self._generic(signature, body)
        return None if ok else self.deny(ctx, "signature does not match")

    def _stripe(self, header: str, body: bytes, secret: str) -> bool:
        stamp: str | None = None
        sigs: list[str] = []
        for item in header.split(","):
            k, _, v = item.strip().partition("=")
            if k == "t":
                stamp = v
            elif k == "v1":
                sigs.append(v)
        if stamp is None or not stamp.isdigit() or not sigs:
            return False
        if abs(time.time() - int(stamp)) > self.config.tolerance:
            return False
        want = _mac(secret, stamp.encode() + b"." + body).hex()
        ok = False
        for sig in sigs:  # check all, so timing does not tell which one matched
            ok |= _eq(sig, want)
        return ok

    def _generic(self, given: str, body: bytes) -> bool:
        cfg: WebhookSignatureConfig = self.config
        assert cfg.secret is not None
        given = given.strip()
        if cfg.prefix:
            if not given.startswith(cfg.prefix):
                return False
            given = given[len(cfg.prefix) :]
        mac = _mac(cfg.secret, body, cfg.algorithm)
        if cfg.encoding == "hex":
            return _eq(given.lower(), mac.hex())
        try:
            decoded = base64.b64decode(given, validate=True)
        except (binascii.Error, ValueError):
            return False
        return _eq(decoded, mac)
