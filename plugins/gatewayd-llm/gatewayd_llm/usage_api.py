"""``GET /_admin/llm/usage``: the usage records' totals, grouped (viewer role).

``?group_by=tenant,key,model,day,deployment,provider`` (any of them; rows are ordered by the
groups as given), ``from``/``to`` (ISO dates or datetimes, UTC, ``to`` exclusive; the
last 30 days without them), ``tenant=`` and ``kind=provider|estimated|partial`` to narrow,
``limit=`` (groups, default 1,000, at most 10,000). The answer: the query as understood, one row
per group (requests, prompt/completion/total tokens, cost, and the same per kind of record),
the totals over all the selected records (whatever the limit), ``truncated`` when there were
more groups than ``limit``, and which gateway instance answered: usage is kept per instance
(each one's ``state.dir``), also with ``state.backend: redis``. A bad parameter answers 400
naming it. The query runs in a thread on a read-only connection (see
:mod:`gatewayd_llm.usage_query`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gatewayd.chain import AdminRequest, AdminRoute, PluginError, Response
from gatewayd_llm.usage_query import (
    READERS,
    BadParameter,
    ReadersBusy,
    StoreMissing,
    UsageQuery,
    UsageReaders,
)

__all__ = ["routes", "store_of", "usage"]


def store_of(instances: Sequence[Any]) -> tuple[Path, Any]:
    """The usage store of the serving ``llm`` plugins (one per process: they share it), and
    the services of the plugin that has it."""
    for plugin in instances:
        store = getattr(plugin, "usage", None)
        if store is not None:
            return Path(store.path), plugin.context.services
    raise PluginError(
        404, "usage_not_recorded", "no llm route of the serving configuration records usage"
    )


BUSY = "too many usage queries are running: try again"


def instance(path: Path) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "store": str(path)}


async def usage(request: AdminRequest, instances: Sequence[Any]) -> Response:
    try:
        query = UsageQuery.from_params(request.query)
    except BadParameter as exc:
        raise PluginError(400, "bad_parameter", str(exc)) from None
    path, services = store_of(instances)
    readers: UsageReaders = services.stores.shared(READERS, UsageReaders)
    try:
        answer = await readers.aggregate(path, query)
    except StoreMissing as exc:  # the llm plugin makes it at start: someone removed it
        raise PluginError(503, "usage_store_missing", str(exc)) from None
    except ReadersBusy:
        raise PluginError(503, "usage_busy", BUSY, {"Retry-After": "1"}) from None
    answer["instance"] = instance(path)
    return Response.json(answer)


def routes() -> list[AdminRoute]:
    return [
        AdminRoute(
            "GET",
            "/usage",
            usage,
            summary="usage totals (tokens, requests, cost by kind of record), grouped",
        )
    ]
