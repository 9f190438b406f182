"""OAuth2 token introspection (RFC 7662) with a bounded cache.

Active tokens are cached for ``cache_ttl`` (never past their ``exp``), inactive ones for
``negative_ttl``; concurrent requests with the same token share one call; at most
``max_concurrency`` calls are in flight. The cache is keyed by a keyed digest of the token.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from typing import Any

import aiohttp

from gatewayd.plugins.jwt_auth.config import IntrospectionConfig

log = logging.getLogger("gatewayd.plugins.jwt_auth")
CACHE_SIZE = 10_000


class IntrospectionUnavailable(Exception):
    """The introspection endpoint could not answer (the request fails closed)."""


class Introspector:
    def __init__(self, config: IntrospectionConfig) -> None:
        self.config = config
        self._pepper = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, tuple[dict[str, Any] | None, float]] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Future[dict[str, Any] | None]] = {}
        self._limit = asyncio.Semaphore(config.max_concurrency)
        self._session: aiohttp.ClientSession | None = None
        self.calls = 0

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def introspect(self, token: str) -> dict[str, Any] | None:
        """The token's claims if active, None if not; raises IntrospectionUnavailable."""
        digest = hashlib.blake2b(token.encode(), key=self._pepper, digest_size=20).digest()
        now = time.time()
        hit = self._cache.get(digest)
        if hit is not None:
            if now < hit[1]:
                claims = hit[0]
                if claims is None or "exp" not in claims or now < float(claims["exp"]):
                    return claims
            del self._cache[digest]
        pending = self._inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            claims = await self._call(token)
            future.set_result(claims)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            del self._inflight[digest]
        until = now + (self.config.cache_ttl if claims else self.config.negative_ttl)
        if claims and isinstance(claims.get("exp"), int | float):
            until = min(until, float(claims["exp"]))
        self._cache[digest] = (claims, until)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return claims

    async def _call(self, token: str) -> dict[str, Any] | None:
        cfg = self.config
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=cfg.timeout))
        auth = aiohttp.BasicAuth(cfg.client_id, cfg.client_secret)
        form = {"token": token, "token_type_hint": "access_token"}
        async with self._limit:
            self.calls += 1
            try:
                async with self._session.post(cfg.url, data=form, auth=auth) as r:
                    if r.status != 200:
                        raise IntrospectionUnavailable(f"introspection endpoint: HTTP {r.status}")
                    data = await r.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise IntrospectionUnavailable(f"introspection failed: {exc}") from None
        if not isinstance(data, dict):
            raise IntrospectionUnavailable("introspection endpoint: not a JSON object")
        return data if data.get("active") is True else None
