"""Fixtures for the identity tests: a real redis-server and a real OIDC issuer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer
from support import RedisServer

from .identity_support import Issuer


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the root fixture's throwaway redis-server."""
    return redis_server.url


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    """A real OIDC issuer on 127.0.0.1 (discovery, JWKS, introspection)."""
    iss = Issuer()
    server = TestServer(iss.app(), host="127.0.0.1")
    await server.start_server()
    iss.url = f"http://127.0.0.1:{server.port}"
    yield iss
    await server.close()
    await asyncio.sleep(0)
