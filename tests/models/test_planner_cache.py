"""The planner's cache is exact: a cached answer is the answer the full look-ahead gives.

The key bins the time features of every imagined visit by the models' split thresholds instead
of keeping the clock, so users at different times share entries. These tests replay many
histories at clustered times through one caching planner and compare every answer with a
planner that computes from scratch, and check the fast LightGBM path against ``predict``.
"""

from __future__ import annotations

import numpy as np
import pytest

from features.state import ACCEPTED, DECLINED, HOUR, UserState
from models.bundle import ModelScorer
from models.native import NativePredictor
from models.planner import Planner
from simulation.synthetic import simulated_bundle
from simulation.worlds import load_world


@pytest.fixture(scope="module")
def ladder():
    world = load_world("ladder")
    bundle = simulated_bundle(world, 3000, 5, params={"n_estimators": 60})
    return world.catalog, ModelScorer(bundle, world.catalog)


def _random_state(cat, rng: np.random.Generator, t0: float) -> tuple[UserState, float]:
    state = UserState()
    t = t0
    for _ in range(int(rng.integers(0, 5))):
        elig = cat.eligible_indices(state.accepted_mask)
        if not elig or state.converted(cat):
            break
        step = int(rng.choice(elig))
        outcome = ACCEPTED if rng.random() < 0.5 else DECLINED
        ctx = {"channel": str(rng.choice(["email", "search", "social"]))}
        state.apply(cat, step, outcome, t, ctx)
        t += float(rng.choice([0.1, 0.5, 2.0, 30.0])) * HOUR
    return state, t + float(rng.choice([0.0, 0.05, 1.0, 20.0])) * HOUR


def test_cached_answers_equal_fresh_look_ahead(ladder) -> None:
    """Each history is asked about at many nearby times: the roots often share split
    positions while the imagined later visits (shifted by the user's pace) cross thresholds
    at different times, which is exactly where an approximate key would go wrong."""
    cat, scorer = ladder
    rng = np.random.default_rng(0)
    cached = Planner().bind(scorer, cat)
    n = 0
    for _ in range(40):
        state, base = _random_state(cat, rng, 1.7e9)
        cands = cat.eligible_indices(state.accepted_mask)
        if state.converted(cat) or not cands:
            continue
        ctx = {"device": str(rng.choice(["mobile", "desktop"]))}
        for now in base + np.sort(rng.uniform(0, 6 * HOUR, 25)):
            fresh = Planner().bind(scorer, cat)  # empty cache: the full computation
            q_fresh, p_fresh = fresh.q_values(state, cands, float(now), ctx, scorer, cat)
            q, p = cached.q_values(state, cands, float(now), ctx, scorer, cat)
            np.testing.assert_array_equal(q, q_fresh)
            np.testing.assert_array_equal(p, p_fresh)
            n += 1
    assert n > 500
    assert len(cached._cache) < 0.8 * n  # states did share entries, or this proved nothing


def test_time_only_enters_through_split_positions(ladder) -> None:
    """Two users a few seconds apart share a key; hours apart (across thresholds) do not."""
    cat, scorer = ladder
    planner = Planner().bind(scorer, cat)
    state = UserState()
    state.apply(cat, 0, ACCEPTED, 1.7e9, {"channel": "email"})
    cands = cat.eligible_indices(state.accepted_mask)
    gap = planner._gap_seconds(state, scorer)

    def key(now: float) -> tuple:
        return planner.cache_key(state, cands, now, {}, scorer, cat, gap)

    assert key(1.7e9 + 60) == key(1.7e9 + 61)
    assert key(1.7e9 + 60) != key(1.7e9 + 60 + 400 * HOUR)


@pytest.mark.parametrize("rows", [500, 5000])  # one thread / every core (PARALLEL_ROWS)
def test_native_predictor_equals_booster_predict(ladder, rows: int) -> None:
    _, scorer = ladder
    rng = np.random.default_rng(1)
    X = rng.integers(0, 6, (rows, len(scorer.spec.names))).astype(np.float64)
    X[:, 8:12] = rng.exponential(20.0, (rows, 4))
    X[rng.random(X.shape) < 0.1] = np.nan
    for model in (scorer.bundle.readiness, scorer.bundle.drop, scorer.bundle.back):
        booster = model.booster_
        np.testing.assert_array_equal(
            NativePredictor(booster)(X), booster.predict(X, num_threads=1)
        )
        assert NativePredictor(booster)(X[:0]).shape == (0,)
    np.testing.assert_array_equal(
        scorer.p_accept_rows(X), scorer.bundle.readiness.positive_proba(X)
    )
