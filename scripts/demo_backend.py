"""A small demo backend for ./scripts/run: JSON hello, health, a stream and an SSE feed."""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web


def build_app(name: str) -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "backend": name,
                "path": request.path_qs,
                "method": request.method,
                "tenant": request.headers.get("X-Gateway-Tenant"),
                "request_id": request.headers.get("X-Request-ID"),
            },
            headers={"Cache-Control": "max-age=5"},
        )

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(10):
            data = json.dumps({"n": i, "t": time.time(), "backend": name})
            await resp.write(f"id: {i}\ndata: {data}\n\n".encode())
            await asyncio.sleep(0.5)
        return resp

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/events", events)
    app.router.add_route("*", "/{tail:.*}", hello)
    return app


async def serve(ports: list[int]) -> None:
    runners = []
    for port in ports:
        runner = web.AppRunner(build_app(f"demo-{port}"), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
    print(f"demo backend on {', '.join(f'127.0.0.1:{p}' for p in ports)}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("ports", nargs="*", type=int, default=[8001, 8002])
    asyncio.run(serve(parser.parse_args().ports))


if __name__ == "__main__":
    main()
