"""``GET /_admin/openapi.json``: the admin API's contract (OpenAPI 3.1), behind admin tokens.

The document is ``gatewayd/admin/openapi.yaml`` (package data, kept in the repository and
reviewed with the code); it is read and turned into JSON once, when the admin app is built.
It covers every route of the admin listener and the built-in plugins' admin routes; a plugin
distribution publishes its own (the LLM gateway's at ``/_admin/llm/openapi.json``), and
``tests/admin/test_openapi.py`` holds the router and this document to the same
(method, path) pairs.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

import yaml
from aiohttp import web

from gatewayd.admin.auth import admin_route

DOCUMENT = "openapi.yaml"


def load_document() -> dict[str, Any]:
    """The admin API's OpenAPI document, as shipped in the package."""
    text = files("gatewayd.admin").joinpath(DOCUMENT).read_text(encoding="utf-8")
    document: dict[str, Any] = yaml.safe_load(text)
    return document


class OpenApiDocument:
    """The document as the JSON bytes served, made once per admin app."""

    __slots__ = ("body",)

    def __init__(self) -> None:
        self.body = json.dumps(load_document(), separators=(",", ":")).encode()


OPENAPI: web.AppKey[OpenApiDocument] = web.AppKey("openapi_document", OpenApiDocument)


@admin_route
async def get_openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI].body, content_type="application/json")


def install(app: web.Application) -> None:
    app[OPENAPI] = OpenApiDocument()
    app.router.add_get("/_admin/openapi.json", get_openapi)
