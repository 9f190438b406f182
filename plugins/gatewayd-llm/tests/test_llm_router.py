"""Deployment choice: weights, least busy, context windows, breakers, fallbacks' order."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from gatewayd_llm.config import LlmConfig
from gatewayd_llm.router import Breaker, Router, RouterState


def router(models: dict[str, Any], clock: list[float] | None = None, **kw: Any) -> Router:
    now = clock if clock is not None else [0.0]
    config = LlmConfig.model_validate({"models": models, **kw})
    return Router(config, RouterState(), random.Random(7), lambda: now[0])


def names(r: Router, model: str, tokens: int = 10) -> list[str]:
    return [d.name for d in r.candidates(model, tokens).order]


def test_weights_share_the_first_choice() -> None:
    r = router(
        {
            "m": [
                {"upstream": "a", "model": "x", "weight": 3},
                {"upstream": "b", "model": "y", "weight": 1},
            ]
        }
    )
    firsts = Counter(names(r, "m")[0] for _ in range(4000))
    assert 0.70 < firsts["m#0"] / 4000 < 0.80  # 3 : 1
    assert all(sorted(names(r, "m")) == ["m#0", "m#1"] for _ in range(10))  # both, always


def test_least_busy_prefers_the_idle_deployment_per_weight() -> None:
    r = router(
        {
            "m": [
                {"upstream": "a", "model": "x", "weight": 2},
                {"upstream": "b", "model": "y", "weight": 1},
            ]
        },
        routing="least_busy",
    )
    a, b = r.models["m"]
    for _ in range(3):
        r.begin(a)
    r.begin(b)
    assert names(r, "m") == ["m#1", "m#0"]  # 3/2 > 1/1
    r.begin(b)
    assert names(r, "m") == ["m#0", "m#1"]  # 3/2 < 2/1
    for _ in range(3):
        r.end(a)
    assert a.state.inflight == 0


def test_context_windows_and_the_fallback_chain() -> None:
    r = router(
        {
            "m": [{"upstream": "a", "model": "x", "context_window": 100}],
            "big": [{"upstream": "b", "model": "y", "context_window": 10000}],
            "last": [{"upstream": "c", "model": "z"}],
        },
        fallbacks={"m": ["big"], "big": ["last", "m"]},
    )
    assert names(r, "m", 50) == ["m#0", "big#0", "last#0"]  # fallbacks of fallbacks, once
    got = r.candidates("m", 500)
    assert [d.name for d in got.order] == ["big#0", "last#0"] and got.too_small == 1
    assert got.largest_window == 10000


def test_a_breaker_opens_lets_one_trial_through_and_closes() -> None:
    clock = [0.0]
    r = router(
        {"m": [{"upstream": "a", "model": "x"}, {"upstream": "b", "model": "y"}]},
        clock,
        breaker={"failures": 2, "open_for": "10s"},
    )
    a = r.models["m"][0]
    assert not r.failure(a) and r.failure(a)  # the second consecutive failure opens it
    got = r.candidates("m", 1)
    assert [d.name for d in got.order] == ["m#1"] and got.open_breakers == 1
    assert got.retry_after == 10
    clock[0] = 10.5  # half open: one trial
    assert "m#0" in names(r, "m")
    r.begin(a)
    assert names(r, "m") == ["m#1"]  # the trial is under way: nobody else
    assert r.failure(a)  # the trial failed: open again
    clock[0] = 21
    r.begin(a)
    r.abandon(a)  # a trial whose client left: another may try
    assert "m#0" in names(r, "m")
    r.begin(a)
    r.success(a)
    assert a.state.breaker.state(clock[0]) == "closed" and a.state.breaker.failures == 0


def test_state_is_kept_by_deployment_across_routers() -> None:
    state = RouterState()
    cfg = LlmConfig.model_validate({"models": {"m": [{"upstream": "a", "model": "x"}]}})
    first = Router(cfg, state)
    first.begin(first.models["m"][0])
    cfg2 = LlmConfig.model_validate(
        {"models": {"other": [{"upstream": "a", "model": "x"}, {"upstream": "b", "model": "y"}]}}
    )
    second = Router(cfg2, state)  # a reload: the same upstream/model is the same deployment
    assert second.models["other"][0].state.inflight == 1
    assert second.models["other"][1].state.inflight == 0
    assert Breaker().state(0) == "closed"
