"""Dashboard panels that plugins contribute, shown on the dashboard's "plugins" page.

A plugin class may define a classmethod ``dashboard_panels()`` returning :class:`Panel`
entries, as it defines ``admin_routes()``. Each panel's ``render`` gets the plugin's instances
in the serving generation and returns a :class:`PanelView`: a table of plain values (strings,
numbers, booleans, ``None``), which the dashboard renders escaped. A panel never returns HTML,
and must not put secrets or header values in its cells. ::

    class CircuitBreakerPlugin(Plugin):
        name = "circuit_breaker"

        @classmethod
        def dashboard_panels(cls) -> list[Panel]:
            return [Panel("Breakers", breakers_panel)]


    async def breakers_panel(instances: Sequence[Any]) -> PanelView:
        return PanelView(columns=("upstream", "target", "state"), rows=[...])

``role`` is who sees the panel: ``viewer`` (every admin) or ``operator``. A ``render`` that
raises shows "this panel failed" (logged) and the rest of the page renders.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gatewayd.chain.admin import ROLES, AdminRole

Cell = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class PanelView:
    """What a panel shows: a table (``columns`` and ``rows`` of cells) and an optional note
    below it (e.g. "no breaker has seen a request yet")."""

    columns: Sequence[str]
    rows: Sequence[Sequence[Cell]]
    note: str = ""

    def __post_init__(self) -> None:
        width = len(self.columns)
        for row in self.rows:
            if len(row) != width:
                raise ValueError(f"a panel row has {len(row)} cells for {width} columns")
            for cell in row:
                if cell is not None and not isinstance(cell, str | int | float | bool):
                    raise ValueError(f"a panel cell is a {type(cell).__name__}, not a value")


PanelRender = Callable[[Sequence[Any]], Awaitable[PanelView]]


@dataclass(frozen=True, slots=True)
class Panel:
    """One panel: its title, what renders it and who may see it."""

    title: str
    render: PanelRender
    role: AdminRole = "viewer"

    def __post_init__(self) -> None:
        if not self.title or not isinstance(self.title, str):
            raise ValueError("a dashboard panel needs a title")
        if self.role not in ROLES:
            raise ValueError(f"panel {self.title!r}: role must be 'viewer' or 'operator'")
        if not callable(self.render):
            raise ValueError(f"panel {self.title!r}: render is not callable")


def panels_of(cls: type[Any]) -> tuple[Panel, ...]:
    """The panels a plugin class declares (none without ``dashboard_panels``); raises
    ``ValueError`` naming the problem when the declaration is malformed."""
    declare = getattr(cls, "dashboard_panels", None)
    if declare is None:
        return ()
    if not callable(declare):
        raise ValueError("dashboard_panels must be a classmethod")
    panels = tuple(declare())
    titles: set[str] = set()
    for p in panels:
        if not isinstance(p, Panel):
            raise ValueError(f"dashboard_panels() returned {type(p).__name__}, expected Panel")
        if p.title in titles:
            raise ValueError(f"panel {p.title!r} is declared twice")
        titles.add(p.title)
    return panels
