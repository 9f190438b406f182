"""Plugins' admin declarations: routes and ``admin_path``."""

from __future__ import annotations

from typing import Any

import pytest

from gatewayd.chain import Response
from gatewayd.chain.admin import AdminRoute, admin_path_of, admin_routes_of


async def handler(call: Any, instances: Any) -> Response:
    return Response.json({})


class Plain:
    name = "plain"


def with_path(path: Any) -> type[Any]:
    return type("P", (), {"name": "p", "admin_path": path})


def test_admin_path_is_optional_and_checked() -> None:
    assert admin_path_of(Plain) is None
    assert admin_path_of(with_path("/_admin/llm")) == "/_admin/llm"
    for bad in ("/admin/llm", "/_admin/LLM", "/_admin/a/b", "/_admin/", 3, "/_admin/x y"):
        with pytest.raises(ValueError, match="must be /_admin/"):
            admin_path_of(with_path(bad))
    for reserved in ("/_admin/keys", "/_admin/plugins", "/_admin/upstreams", "/_admin/audit"):
        with pytest.raises(ValueError, match="serves itself"):
            admin_path_of(with_path(reserved))


def test_routes_are_validated() -> None:
    cls = type("R", (), {"admin_routes": classmethod(lambda c: [AdminRoute("GET", "/x", handler)])})
    (route,) = admin_routes_of(cls)
    assert route.match("/x") == {} and route.match("/y") is None
    twice = type(
        "T",
        (),
        {"admin_routes": classmethod(lambda c: [AdminRoute("GET", "/x", handler)] * 2)},
    )
    with pytest.raises(ValueError, match="declared twice"):
        admin_routes_of(twice)
    with pytest.raises(ValueError, match="not supported"):
        AdminRoute("TRACE", "/x", handler)
