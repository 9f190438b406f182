"""The floor for scripts/bench: a minimal aiohttp reverse proxy on uvloop.

One shared ClientSession, hop-by-hop headers dropped, bodies streamed both ways (iter_any), no
access log. Usage: python minimal_proxy.py PORT UPSTREAM_URL
"""

import asyncio
import sys
from collections.abc import Awaitable, Callable

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDict, MultiMapping

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te"}
HOP_BY_HOP |= {"trailer", "transfer-encoding", "upgrade"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def strip(headers: "MultiMapping[str]", *also: str) -> "CIMultiDict[str]":
    drop = HOP_BY_HOP.union(also)
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


def make_handler(session: aiohttp.ClientSession, upstream: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        body = request.content if request.body_exists else None
        headers = strip(request.headers, "host")
        url = upstream + request.path_qs
        async with session.request(
            request.method, url, headers=headers, data=body, allow_redirects=False
        ) as upstream_resp:
            resp = web.StreamResponse(
                status=upstream_resp.status, headers=strip(upstream_resp.headers)
            )
            await resp.prepare(request)
            async for chunk in upstream_resp.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    return handle


async def main(port: int, upstream: str) -> None:
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", make_handler(session, upstream))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2].rstrip("/")))
