"""An explanation adds up: base value + every feature's contribution = the model's logit for the
chosen step, and that logit, calibrated, is the readiness the response reports for it.

The logit comes from LightGBM's own raw prediction and the full SHAP row is recomputed here, so
the check does not lean on the explanation code it checks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from features.catalog import Catalog
from features.state import UserState
from features.timeutil import parse_ts
from models.bundle import ModelScorer
from models.decide import Decider
from service.experiments import Arm
from tests.service.helpers import decide

TS = "2025-03-04T10:11:12Z"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from simulation.synthetic import simulated_bundle
    from simulation.worlds import load_world

    world = load_world("eager")
    bundle = simulated_bundle(world, 300, 3, params={"n_estimators": 20}, n_jobs=1)
    path = tmp_path_factory.mktemp("world") / "catalog.yaml"
    steps = {"steps": world.catalog.to_list()}
    path.write_text(yaml.safe_dump(steps, sort_keys=False), encoding="utf-8")
    return path, bundle


@pytest.mark.parametrize("policy", ["greedy", "planner"])
def test_base_value_plus_contributions_is_the_models_logit(
    make_client: Callable[..., TestClient], tiny_model: tuple[Path, Any], policy: str
) -> None:
    catalog_path, bundle = tiny_model
    scorers: list[ModelScorer] = []

    def factory(catalog: Catalog, arm: Arm) -> Decider:
        scorers.append(ModelScorer(bundle, catalog))
        return Decider(catalog, arm.policy, scorer=scorers[-1], model_version="1")

    client = make_client(catalog=catalog_path, policy=policy, decider_factory=factory)
    ctx = {"channel": "email", "device": "mobile"}
    d = decide(client, "x1", ts=TS, context=ctx, explain=True)
    exp = d["explanation"]
    assert exp is not None and exp["step"] == d["step"]

    scorer = scorers[-1]
    step = scorer.catalog.index[d["step"]]
    X = scorer.matrix(UserState(context=dict(ctx)), [step], parse_ts(TS), ctx)
    booster = bundle.readiness.booster_
    logit = float(booster.predict(X, raw_score=True)[0])
    shap = booster.predict(X, pred_contrib=True)[0]
    assert shap[-1] + shap[:-1].sum() == pytest.approx(logit, abs=1e-9)

    names = list(scorer.spec.names)
    shown = {c["feature"]: c["contribution"] for c in exp["contributions"]}
    assert exp["base_value"] == pytest.approx(shap[-1], abs=1e-6)
    for feature, value in shown.items():  # each shown value is that feature's own
        assert value == pytest.approx(shap[names.index(feature)], abs=1e-6), feature
    hidden = [j for j, name in enumerate(names) if name not in shown]
    total = exp["base_value"] + sum(shown.values()) + float(shap[hidden].sum())
    assert total == pytest.approx(logit, abs=1e-5)
    # the shown ones are the largest: nothing hidden outweighs the smallest shown
    if hidden:
        assert np.abs(shap[hidden]).max() <= min(abs(v) for v in shown.values()) + 1e-6
    # and the logit, as a probability and calibrated, is the readiness reported for the step
    served = {c["step"]: c["p_accept"] for c in d["candidates"]}
    p = float(bundle.readiness.calibrate(np.array([1.0 / (1.0 + np.exp(-logit))]))[0])
    assert served[d["step"]] == pytest.approx(p, abs=1e-6)
