"""``recommend_frame`` decides in chunks with ``Decider.decide_many``: the frame it writes is the
one deciding user by user with ``Decider.decide`` gives, value for value."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from features.events import EventLog, validate_frame
from models.bundle import ModelScorer
from models.decide import Decider
from models.policies import PolicyConfig
from simulation.simulate import generate_log
from simulation.synthetic import bundle_from_frame
from simulation.worlds import load_world
from training import recommend
from training.recommend import OUTPUT_COLUMNS, final_states, recommend_frame


@pytest.fixture(scope="module")
def world():
    return load_world("two_goals")  # prerequisites and two goals


@pytest.fixture(scope="module")
def log(world) -> EventLog:
    frame = pd.DataFrame(generate_log(world, 500, seed=11))
    return validate_frame(frame, world.catalog, source="sim")


@pytest.fixture(scope="module")
def scorer(world, log) -> ModelScorer:
    bundle = bundle_from_frame(
        log.frame, world.catalog, log.context_columns, params={"n_estimators": 40}
    )
    return ModelScorer(bundle, world.catalog)


def _one_by_one(frame, catalog, decider, context_columns) -> pd.DataFrame:
    """``recommend_frame`` as it was: one ``decide`` per user."""
    fs = final_states(frame, catalog, context_columns)
    cols: dict[str, list] = {c: [] for c in OUTPUT_COLUMNS}
    for u, (uid, state) in enumerate(zip(fs.user_ids, fs.states, strict=True)):
        r = decider.decide(uid, state, now=float(fs.last_ts[u]))
        cols["user_id"].append(uid)
        cols["step"].append(r.step)
        cols["stage"].append(r.stage)
        cols["p_accept"].append(math.nan if r.p_accept is None else r.p_accept)
        cols["propensity"].append(math.nan if r.propensity is None else r.propensity)
        cols["policy"].append(r.policy)
        cols["reason"].append(r.reason)
    text = ("user_id", "step", "stage", "policy", "reason")
    return pd.DataFrame(
        {c: pd.Series(v, dtype=object if c in text else np.float64) for c, v in cols.items()}
    )


@pytest.mark.parametrize(
    "policy", ["planner", "planner+epsilon=0.3", "planner+softmax=0.1", "greedy", "ladder"]
)
def test_chunked_recommend_equals_user_by_user(world, log, scorer, policy, monkeypatch) -> None:
    monkeypatch.setattr(recommend, "CHUNK", 97)  # several chunks, the last one short
    config = PolicyConfig.parse(policy)
    ctx = log.context_columns
    seen: list[int] = []
    got = recommend_frame(
        log.frame,
        world.catalog,
        Decider(world.catalog, config, scorer=scorer, model_version="t", seed=2),
        ctx,
        progress=seen.append,
    )
    want = _one_by_one(
        log.frame,
        world.catalog,
        Decider(world.catalog, config, scorer=scorer, model_version="t", seed=2),
        ctx,
    )
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    n = len(want)
    assert seen == [*range(97, n, 97), n]
    assert want["step"].notna().sum() > 100 and (want["reason"] == "converted").sum() > 10
    if "epsilon" in policy:
        assert (want["propensity"] < 1).any()
