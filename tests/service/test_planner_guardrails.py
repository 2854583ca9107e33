"""The planner under guardrails: a step in its cooldown is never planned to, and the pause rule
stops the planner like any other policy (guardrails act before the policy decides)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from features.catalog import Catalog
from models.bundle import ModelScorer
from models.decide import Decider
from service.experiments import Arm
from tests.service.helpers import decide, outcome

T0 = 1_750_000_000.0
HOUR = 3600.0


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture(scope="module")
def tiny_model() -> tuple[list[dict[str, Any]], Any]:
    from simulation.synthetic import simulated_bundle
    from simulation.worlds import load_world

    world = load_world("eager")
    bundle = simulated_bundle(world, 300, 3, params={"n_estimators": 20}, n_jobs=1)
    return world.catalog.to_list(), bundle


def _client(
    make_client: Callable[..., TestClient],
    tmp_path: Path,
    model: tuple[list[dict[str, Any]], Any],
    cooldown_of: str | None = None,
    **settings: Any,
) -> TestClient:
    steps, bundle = model
    steps = [dict(s, cooldown=24) if s["id"] == cooldown_of else dict(s) for s in steps]
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"steps": steps}, sort_keys=False), encoding="utf-8")

    def factory(catalog: Catalog, arm: Arm) -> Decider:
        return Decider(catalog, arm.policy, scorer=ModelScorer(bundle, catalog), model_version="1")

    return make_client(catalog=path, policy="planner", decider_factory=factory, **settings)


def _at(hours: float) -> float:
    return T0 + hours * HOUR


def test_the_planner_never_offers_a_step_in_its_cooldown(
    make_client: Callable[..., TestClient], tmp_path: Path, tiny_model: Any
) -> None:
    plain = _client(make_client, tmp_path / "plain", tiny_model)
    first = decide(plain, "c1", ts=_at(0))["step"]  # what the planner picks with no rules
    assert first is not None
    client = _client(make_client, tmp_path / "guarded", tiny_model, cooldown_of=first)
    d = decide(client, "c1", ts=_at(0))
    assert d["step"] == first and d["suppressed"] == []
    outcome(client, d["decision_id"], "declined", ts=_at(1))
    for hours in (2, 10, 24.5):  # within 24 h of the decline
        again = decide(client, "c1", ts=_at(hours))
        assert again["step"] != first, hours
        assert {"step": first, "rule": "cooldown"} in again["suppressed"]
        assert all(c["step"] != first for c in again["candidates"])
    later = decide(client, "c1", ts=_at(25.5))
    assert {"step": first, "rule": "cooldown"} not in later["suppressed"]
    assert first in {c["step"] for c in later["candidates"]}  # planned over again


def test_the_pause_rule_stops_the_planner_and_lifts(
    make_client: Callable[..., TestClient], tmp_path: Path, tiny_model: Any
) -> None:
    client = _client(make_client, tmp_path, tiny_model, pause_after_declines=2, pause_hours=48)
    for k in range(2):
        d = decide(client, "p1", ts=_at(k))
        assert d["step"] is not None and d["suppressed"] == [] and d["policy"] == "planner"
        outcome(client, d["decision_id"], "declined", ts=_at(k + 0.5))
    paused = decide(client, "p1", ts=_at(3))
    assert paused["step"] is None and paused["reason"] == "suppressed"
    assert {s["rule"] for s in paused["suppressed"]} == {"pause"}
    assert decide(client, "p2", ts=_at(3))["step"] is not None  # only p1 is paused
    resumed = decide(client, "p1", ts=_at(1.5 + 48.5))
    assert resumed["step"] is not None and resumed["suppressed"] == []
