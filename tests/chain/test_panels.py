"""The dashboard panel declaration that plugins use (gatewayd.chain.panels)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from gatewayd.chain import Panel, PanelView, panels_of


async def render(instances: Sequence[Any]) -> PanelView:
    return PanelView(columns=("name", "n"), rows=[("a", len(instances))])


def test_a_plugin_declares_its_panels() -> None:
    class WithPanels:
        @classmethod
        def dashboard_panels(cls) -> list[Panel]:
            return [Panel("One", render), Panel("Two", render, role="operator")]

    class Without:
        pass

    assert [p.title for p in panels_of(WithPanels)] == ["One", "Two"]
    assert panels_of(WithPanels)[1].role == "operator"
    assert panels_of(Without) == ()


def test_malformed_declarations_are_refused_with_the_reason() -> None:
    class Twice:
        @classmethod
        def dashboard_panels(cls) -> list[Any]:
            return [Panel("Same", render), Panel("Same", render)]

    class NotPanels:
        @classmethod
        def dashboard_panels(cls) -> list[Any]:
            return [{"title": "x"}]

    with pytest.raises(ValueError, match="declared twice"):
        panels_of(Twice)
    with pytest.raises(ValueError, match="expected Panel"):
        panels_of(NotPanels)
    with pytest.raises(ValueError, match="role"):
        Panel("x", render, role="admin")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="title"):
        Panel("", render)


def test_a_view_holds_plain_values_only() -> None:
    assert PanelView(("a", "b"), [("x", 1), (None, True)]).rows[1] == (None, True)
    with pytest.raises(ValueError, match="cells for 2 columns"):
        PanelView(("a", "b"), [("x",)])
    with pytest.raises(ValueError, match="not a value"):
        PanelView(("a",), [(object(),)])
