"""The LLM gateway's published contract: ``GET /_admin/llm/openapi.json`` (viewer role).

The document is ``gatewayd_llm/openapi.yaml`` (package data, reviewed with the code): the
OpenAI-compatible endpoints (``/v1/...``: requests, answers, examples, OpenAI's error object,
the streamed chunks event by event) and the operations API under ``/_admin/llm``. It is read
on each call (an admin read, rarely made). The distribution's tests hold the
plugin's routes and the document to the same (method, path) pairs and run schemathesis and
the official OpenAI SDK against a live gateway with it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

import yaml
from multidict import CIMultiDict

from gatewayd.chain import AdminRequest, AdminRoute, Response

__all__ = ["document", "routes"]

DOCUMENT = "openapi.yaml"


def document() -> dict[str, Any]:
    """The OpenAPI document as shipped in the distribution."""
    text = files("gatewayd_llm").joinpath(DOCUMENT).read_text(encoding="utf-8")
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


async def serve(request: AdminRequest, instances: Sequence[Any]) -> Response:
    body = json.dumps(document(), separators=(",", ":")).encode()
    return Response(200, CIMultiDict({"Content-Type": "application/json"}), body)


def routes() -> list[AdminRoute]:
    return [AdminRoute("GET", "/openapi.json", serve, summary="this API's OpenAPI 3.1 document")]
