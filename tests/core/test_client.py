"""The forwarder's aiohttp request: the direct set-up of a bodiless request must leave it in the
state aiohttp's own ``ClientRequest.__init__`` would (this guards aiohttp upgrades)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from gatewayd.proxy.client import ProxyClientRequest


def _state(req: ProxyClientRequest) -> dict[str, object]:
    state = dict(vars(req))
    state["headers"] = list(req.headers.items())
    state.pop("_timer")  # a shared no-op timer in one, a fresh one in the other
    state["_continue"] = state.get("_continue") is not None  # a future each: compare presence
    return state


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
@pytest.mark.parametrize("expect", [False, True])
async def test_the_direct_set_up_matches_aiohttps_own(method: str, expect: bool) -> None:
    loop = asyncio.get_running_loop()
    url = URL("http://127.0.0.1:8080/a/b?x=1", encoded=True)
    extra = {"Expect": "100-continue"} if expect else {}
    async with aiohttp.ClientSession() as session:

        def make(**more: object) -> ProxyClientRequest:
            headers = CIMultiDict({"X-Forwarded-For": "203.0.113.9", "Accept": "*/*", **extra})
            return ProxyClientRequest(
                method, url, headers=headers, loop=loop, session=session, **more
            )

        direct = make()
        through_aiohttp = make(chunked=None)  # any extra argument takes aiohttp's own path
        assert _state(direct) == _state(through_aiohttp)
        assert direct.headers["Host"] == "127.0.0.1:8080"
        assert "User-Agent" not in direct.headers  # nothing the client did not send
        assert (direct._continue is not None) is expect
