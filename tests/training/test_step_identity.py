"""Step identity: in the ``twin_steps`` world two steps share stage, effort and value but users
take one far more readily. Without the ``step_id`` feature the model cannot tell them apart;
with it, it can, and held-out log loss improves. A step the model never saw keeps the prior
its attributes give."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.catalog import Catalog
from features.events import validate_frame
from features.state import UserState
from models.bundle import ModelScorer
from simulation.simulate import generate_log
from simulation.worlds import load_world
from training.pipeline import fit_and_evaluate

TWINS = Path(__file__).parent / "worlds" / "twin_steps.yaml"


@pytest.fixture(scope="module")
def fitted():
    world = load_world(str(TWINS))
    frame = pd.DataFrame(generate_log(world, 2500, 11))
    log = validate_frame(frame, world.catalog, source="twins")
    on = fit_and_evaluate(log, world.catalog, step_feature=True)
    off = fit_and_evaluate(log, world.catalog, step_feature=False)
    return world, on, off


def _readiness(out, catalog: Catalog, steps: list[str]) -> np.ndarray:
    scorer = ModelScorer(out.bundle, catalog)
    state = UserState()
    state.apply(catalog, catalog.index["read_intro"], "accepted", 1_700_000_000.0, {})
    idx = [catalog.index[s] for s in steps]
    return scorer.p_accept(state, idx, 1_700_003_600.0, {"channel": "email"})


@pytest.mark.slow
def test_the_step_id_tells_twin_steps_apart_and_lowers_held_out_log_loss(fitted):
    world, on, off = fitted
    assert on.spec.names[-1] == "step_id" and "step_id" not in off.spec.names
    assert on.holdout.tolist() == off.holdout.tolist()  # the same held-out offers
    assert on.metrics["lgbm"]["logloss"] < off.metrics["lgbm"]["logloss"] - 0.003
    assert on.metrics["lgbm"]["auc"] > off.metrics["lgbm"]["auc"]
    p_off = _readiness(off, world.catalog, ["watch_clip", "watch_demo"])
    p_on = _readiness(on, world.catalog, ["watch_clip", "watch_demo"])
    assert p_off[0] == p_off[1]  # alike in everything the model sees
    assert p_on[0] > p_on[1] + 0.05  # the clip's appeal is learned


@pytest.mark.slow
def test_a_step_new_to_the_log_gets_its_attributes_prior(fitted):
    world, on, _ = fitted
    data = world.catalog.to_list()
    data.insert(2, {**data[1], "id": "watch_trailer"})  # a new step, like the clip in attributes
    catalog = Catalog.from_data(data)
    p = _readiness(on, catalog, ["watch_clip", "watch_demo", "watch_trailer"])
    assert np.isfinite(p).all() and 0.02 < p[2] < 0.98
    assert np.isnan(on.spec.step_codes(catalog)[catalog.index["watch_trailer"]])
