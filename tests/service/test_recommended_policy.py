"""The service serves the policy a model's training run recommends, unless configured.

A model directory whose bundle meta names ``recommended_policy`` (the fake bundle loader of the
start-up tests returns it) is served with that policy when no ``NEXTSTEP_POLICY`` is set, and the
response's ``policy`` field says so; a configured policy always wins, and a model without a
(valid) recommendation keeps the default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from features.catalog import Catalog, load_catalog
from models.policies import PolicyConfig
from service.app import create_app
from service.experiments import Arm, default_experiment, load_experiment
from service.model_loader import ModelLoader
from service.runtime import ModelDeciderFactory, served_policy
from service.settings import Settings
from tests.service.helpers import FakeScorer


def _bundle(path: Path, catalog: Catalog) -> tuple[Any, dict[str, Any]]:
    meta = json.loads((Path(path) / "model.json").read_text())
    return FakeScorer(catalog), meta


def _serve(tmp_path: Path, catalog_path: Path, meta: dict[str, Any], **settings: Any) -> dict:
    model = tmp_path / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "model.json").write_text(json.dumps(meta))
    s = Settings(
        home=tmp_path / "home",
        catalog=catalog_path,
        database_url=f"sqlite:///{tmp_path / 'service.db'}",
        model_uri=str(model),
        **settings,
    )
    loader = ModelLoader(s.home, s.tracking_uri, load_catalog(catalog_path), bundle_loader=_bundle)
    with TestClient(create_app(s, decider_factory=ModelDeciderFactory(s, loader))) as client:
        r = client.post("/v1/next-step", json={"user_id": "u1"})
        assert r.status_code == 200, r.text
        return r.json()


@pytest.mark.parametrize(
    ("meta", "settings", "expected"),
    [
        ({"recommended_policy": "big_ask"}, {}, "big_ask"),
        ({"recommended_policy": "greedy"}, {}, "greedy"),
        ({"recommended_policy": "big_ask"}, {"policy": "greedy"}, "greedy"),
        ({"recommended_policy": "greedy"}, {"policy": "big_ask"}, "big_ask"),
    ],
    ids=["recommended", "recommended-model-policy", "configured-wins", "configured-wins-2"],
)
def test_the_response_names_the_policy_served(
    tmp_path: Path, catalog_path: Path, meta: dict, settings: dict, expected: str
) -> None:
    assert _serve(tmp_path, catalog_path, meta, **settings)["policy"] == expected


def test_served_policy_keeps_the_arms_exploration_and_only_follows_when_asked() -> None:
    follow = Arm("champion", PolicyConfig("planner", "epsilon", 0.1), follow_model=True)
    got = served_policy(follow, {"recommended_policy": "ladder"})
    assert got == PolicyConfig("ladder", "epsilon", 0.1)
    fixed = Arm("champion", PolicyConfig("planner"))
    assert served_policy(fixed, {"recommended_policy": "ladder"}) == PolicyConfig("planner")
    assert served_policy(follow, None) == follow.policy
    assert served_policy(follow, {}) == follow.policy  # an older model: the default stays
    assert served_policy(follow, {"recommended_policy": "no_such"}) == follow.policy
    assert default_experiment("planner", follow_model=True).arms[0].follow_model
    assert not load_experiment(None, default_policy="planner").arms[0].follow_model
