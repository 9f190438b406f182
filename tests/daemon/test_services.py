"""gatewayd.daemon.services: the services the daemon builds once and hands to every plugin."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from gatewayd.chain import PluginServices
from gatewayd.config import validate_data
from gatewayd.daemon.services import build_services
from gatewayd.observability.metrics import Metrics


async def test_state_dir_is_the_configs_state_dir(tmp_path: Path) -> None:
    config = validate_data(
        {
            "state": {"dir": str(tmp_path / "state")},
            "upstreams": {"api": {"targets": ["http://127.0.0.1:8001"]}},
            "routes": [{"name": "api", "upstream": "api"}],
        },
        None,
        env={},
    )
    metrics = Metrics(CollectorRegistry())
    services = await build_services(config, metrics)
    try:
        public: PluginServices = services  # what PluginContext.services promises (mypy)
        assert public.state_dir == tmp_path / "state"
        assert isinstance(public.state_dir, Path)
    finally:
        await services.close()
        metrics.close()
