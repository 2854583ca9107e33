"""Guardrails and explanations over HTTP: cooldowns, the pause rule, the ``suppressed`` list,
``reason: "suppressed"`` and ``explain`` on and off (with a real, tiny LightGBM bundle)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from features.catalog import Catalog
from models.decide import Decider
from service.experiments import Arm
from tests.service.helpers import decide, fake_factory, outcome

T0 = 1_750_000_000.0
HOUR = 3600.0

# One start step with a 24-hour cooldown after a decline; a second start step without rules.
GUARDED = {
    "steps": [
        {"id": "read_intro", "stage": "start", "effort": 1, "cooldown": 24},
        {"id": "watch_clip", "stage": "start", "effort": 2},
        {"id": "purchase", "stage": "convert", "effort": 8, "requires": ["read_intro"]},
    ]
}


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture
def guarded_catalog(tmp_path: Path) -> Path:
    path = tmp_path / "guarded.yaml"
    path.write_text(yaml.safe_dump(GUARDED), encoding="utf-8")
    return path


def _at(hours: float) -> float:
    return T0 + hours * HOUR


def test_declined_step_is_not_reoffered_within_its_cooldown(
    make_client: Callable[..., TestClient], guarded_catalog: Path
) -> None:
    client = make_client(
        catalog=guarded_catalog,
        policy="greedy",
        decider_factory=fake_factory(probs={"read_intro": 0.9, "watch_clip": 0.2}),
    )
    first = decide(client, "c1", ts=_at(0))
    assert first["step"] == "read_intro" and first["suppressed"] == []
    outcome(client, first["decision_id"], "declined", ts=_at(1))
    # within the cooldown: read_intro is held back, the other step is offered
    again = decide(client, "c1", ts=_at(5))
    assert again["step"] == "watch_clip"
    assert again["suppressed"] == [{"step": "read_intro", "rule": "cooldown"}]
    assert all(c["step"] != "read_intro" for c in again["candidates"])
    # when the only candidate is under cooldown, nothing is offered and the reason says why
    only = decide(client, "c1", ts=_at(5), candidates=["read_intro"])
    assert only["step"] is None and only["reason"] == "suppressed"
    assert only["suppressed"] == [{"step": "read_intro", "rule": "cooldown"}]
    # after the cooldown (24 h after the decline) it is offered again
    later = decide(client, "c1", ts=_at(26))
    assert later["step"] == "read_intro" and later["suppressed"] == []


def test_pause_after_consecutive_declines(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(
        policy="greedy",
        decider_factory=fake_factory(),
        pause_after_declines=2,
        pause_hours=48,
    )
    for k in range(2):
        d = decide(client, "p1", ts=_at(k))
        assert d["step"] is not None and d["suppressed"] == []
        outcome(client, d["decision_id"], "declined", ts=_at(k + 0.5))
    paused = decide(client, "p1", ts=_at(3))
    assert paused["step"] is None and paused["reason"] == "suppressed"
    assert paused["suppressed"] and {s["rule"] for s in paused["suppressed"]} == {"pause"}
    steps = {s["step"] for s in paused["suppressed"]}
    assert "read_intro" in steps and "watch_clip" in steps
    # other users are unaffected, and the pause ends after pause_hours
    assert decide(client, "p2", ts=_at(3))["step"] is not None
    resumed = decide(client, "p1", ts=_at(1.5 + 49))
    assert resumed["step"] is not None and resumed["suppressed"] == []


def test_cap_on_asks_per_period(make_client: Callable[..., TestClient]) -> None:
    client = make_client(
        policy="greedy", decider_factory=fake_factory(), max_asks_per_period=1, period_hours=12
    )
    d = decide(client, "cap", ts=_at(0))
    outcome(client, d["decision_id"], "declined", ts=_at(0.1))
    capped = decide(client, "cap", ts=_at(2))
    assert capped["step"] is None and capped["reason"] == "suppressed"
    assert {s["rule"] for s in capped["suppressed"]} == {"user_cap"}
    assert decide(client, "cap", ts=_at(13))["step"] is not None


def test_no_guardrails_by_default_and_explain_is_null_without_a_model(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(policy="greedy")  # no model at all: serves the ladder
    for k in range(4):
        d = decide(client, "free", ts=_at(k))
        assert d["suppressed"] == [] and "explanation" not in d
        outcome(client, d["decision_id"], "declined", ts=_at(k + 0.5))
    d = decide(client, "free", ts=_at(5), explain=True)
    assert d["step"] is not None and d["explanation"] is None


# -- explanations with a real model -----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from simulation.synthetic import simulated_bundle
    from simulation.worlds import load_world

    world = load_world("eager")
    cat = world.catalog
    bundle = simulated_bundle(world, 300, 3, params={"n_estimators": 20}, n_jobs=1)
    path = tmp_path_factory.mktemp("world") / "catalog.yaml"
    path.write_text(yaml.safe_dump({"steps": cat.to_list()}, sort_keys=False), encoding="utf-8")
    return path, bundle


def test_explain_on_and_off_with_a_real_model(
    make_client: Callable[..., TestClient], tiny_model: tuple[Path, Any]
) -> None:
    from models.bundle import ModelScorer

    catalog_path, bundle = tiny_model

    def factory(catalog: Catalog, arm: Arm) -> Decider:
        return Decider(catalog, arm.policy, scorer=ModelScorer(bundle, catalog), model_version="1")

    client = make_client(catalog=catalog_path, policy="planner", decider_factory=factory)
    ctx = {"channel": "email", "device": "mobile"}
    plain = decide(client, "e1", ts=_at(0), context=ctx)
    assert "explanation" not in plain and plain["suppressed"] == []
    explained = decide(client, "e2", ts=_at(0), context=ctx, explain=True)
    exp = explained["explanation"]
    assert exp is not None and exp["step"] == explained["step"]
    assert isinstance(exp["base_value"], float)
    contributions = exp["contributions"]
    assert 1 <= len(contributions) <= 5
    assert all(isinstance(c["feature"], str) and c["feature"] for c in contributions)
    magnitudes = [abs(c["contribution"]) for c in contributions]
    assert magnitudes == sorted(magnitudes, reverse=True)
    # each candidate's readiness and score are in the response
    assert explained["candidates"] and all(
        c["p_accept"] is not None and "score" in c for c in explained["candidates"]
    )
    # the explanation joins the idempotency fingerprint: same key, different explain -> 409
    body = {"user_id": "e3", "ts": _at(0)}
    r1 = client.post("/v1/next-step", json=body, headers={"Idempotency-Key": "k-explain"})
    r2 = client.post(
        "/v1/next-step", json={**body, "explain": True}, headers={"Idempotency-Key": "k-explain"}
    )
    assert r1.status_code == 200 and r2.status_code == 409
