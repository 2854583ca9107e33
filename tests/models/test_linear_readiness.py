"""The logistic readiness model a bundle serves when asked (``--readiness-model logistic|auto``,
``models.linear``).

Its numbers must be the fitted scikit-learn pipeline's (missing values, unseen categories and
all), survive the serving artifact bit for bit, and plug into the scorer and the planner, whose
cache must then key exact values (no tree thresholds bin a linear model's inputs).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from features.catalog import Catalog
from features.spec import FeatureSpec
from features.state import UserState
from models.bundle import ModelBundle, ModelScorer
from models.linear import LinearReadiness, is_linear
from models.planner import Planner
from models.readiness import LogisticBaseline, fit_bundle
from models.serving import load_serving, save_serving

CATALOG = Catalog.from_data(
    [
        {"id": "intro", "stage": "start", "effort": 1},
        {"id": "clip", "stage": "deliver", "effort": 2},
        {"id": "account", "stage": "build", "effort": 3},
        {"id": "buy", "stage": "convert", "effort": 5, "goal": True},
    ]
)


def _data(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Three numeric columns (one with holes) and one categorical code column."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    X[:, 3] = rng.integers(0, 4, size=n)
    X[rng.random(n) < 0.2, 1] = np.nan
    X[rng.random(n) < 0.1, 3] = np.nan
    logit = 0.8 * X[:, 0] - 0.5 * np.nan_to_num(X[:, 1]) + 0.6 * (X[:, 3] == 2)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return X, y, [3]


@pytest.fixture(scope="module")
def fitted() -> tuple[LogisticBaseline, LinearReadiness, np.ndarray]:
    X, y, cats = _data()
    baseline = LogisticBaseline(categorical_features=tuple(cats)).fit(X, y)
    return baseline, LinearReadiness.from_baseline(baseline), X


def test_probabilities_equal_the_pipeline_including_missing_and_unseen_values(fitted) -> None:
    baseline, linear, X = fitted
    probe = X[:50].copy()
    probe[:10, 3] = 9.0  # a code never seen in training: the prior
    probe[10:20, 0] = np.nan  # missing where training had no holes: the median
    probe[20:25, 1] = np.nan
    np.testing.assert_allclose(
        linear.positive_proba(probe), baseline.predict_proba(probe)[:, 1], rtol=0, atol=1e-12
    )


def test_contributions_add_up_to_the_log_odds(fitted) -> None:
    _, linear, X = fitted
    c = linear.contributions(X[:30])
    assert c.shape == (30, 5)
    np.testing.assert_allclose(c.sum(axis=1), linear.raw(X[:30]), atol=1e-12)
    # the categorical feature's effect depends on its code only
    same = X[:30, 3] == X[0, 3]
    assert np.allclose(c[same, 3], c[0, 3])


def test_dict_round_trip_is_exact(fitted) -> None:
    _, linear, X = fitted
    back = LinearReadiness.from_dict(json.loads(json.dumps(linear.to_dict())))
    assert is_linear(back)
    assert np.array_equal(back.raw(X), linear.raw(X))
    with pytest.raises(ValueError, match="not a logistic model"):
        LinearReadiness.from_dict({**linear.to_dict(), "kind": "tree"})


@pytest.fixture(scope="module")
def linear_bundle() -> ModelBundle:
    """A bundle fitted on simulated-like rows, its readiness swapped for the baseline."""
    spec = FeatureSpec()
    rng = np.random.default_rng(1)
    n = 800
    X = np.zeros((n, len(spec.names)))
    X[:] = rng.normal(size=X.shape)
    for j in spec.categorical_indices:
        X[:, j] = rng.integers(0, 3, size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-X[:, 0]))).astype(int)
    bundle = fit_bundle(
        X,
        y,
        (rng.random(n) < 0.3),
        (rng.random(n) < 0.7),
        np.zeros(n, bool),
        spec,
        typical_gap_hours=24.0,
        seed=0,
        n_jobs=1,
        params={"n_estimators": 20},
    )
    baseline = LogisticBaseline(categorical_features=tuple(spec.categorical_indices)).fit(X, y)
    return dataclasses.replace(bundle, readiness=LinearReadiness.from_baseline(baseline))


def test_serving_artifact_round_trip_scores_the_same(linear_bundle, tmp_path: Path) -> None:
    out = save_serving(linear_bundle, tmp_path)
    assert not (out / "readiness.txt").exists()  # no tree file: coefficients in the index
    loaded = load_serving(out)
    assert is_linear(loaded.readiness)
    a, b = ModelScorer(linear_bundle, CATALOG), ModelScorer(loaded, CATALOG)
    state = UserState()
    p_a = a.p_accept(state, [0, 1, 2, 3], 1_000.0, {"channel": "email"})
    p_b = b.p_accept(state, [0, 1, 2, 3], 1_000.0, {"channel": "email"})
    assert np.array_equal(p_a, p_b)
    assert np.all((p_a > 0) & (p_a < 1))


def test_planner_keys_exact_times_for_a_linear_model(linear_bundle) -> None:
    """No thresholds bin a linear model's inputs: two roots a second apart are different
    points (a tree model would key them alike), and a batch keys a root as it is keyed alone."""
    scorer = ModelScorer(linear_bundle, CATALOG)
    assert all(t is None for t in scorer.split_lists)
    planner = Planner().bind(scorer, CATALOG)
    state = dataclasses.replace(UserState(), n_asks=1, first_ts=100.0, prev_ts=100.0, last_ts=500.0)
    roots = [(state, [0, 1, 2, 3], 1_000.0 + k, {}) for k in range(40)]
    keys, _ = planner._keys(roots, [3600.0] * len(roots), scorer, CATALOG)
    assert len(set(keys)) == len(roots)
    alone = planner.cache_key(state, [0, 1, 2, 3], 1_001.0, {}, scorer, CATALOG, 3600.0)
    assert alone == keys[1]
    out, p = planner.plan_many(roots[:2], scorer, CATALOG)[0]
    assert out.greedy in (0, 1, 2, 3) and len(p) == 4 and np.isclose(out.probs.sum(), 1.0)


def test_the_planner_walks_only_the_ladder_with_a_linear_readiness(linear_bundle) -> None:
    """The other walks need readiness that can rate an early bigger yes; the logistic
    baseline, linear in effort and history, over-rates it, so with it leaves walk the ladder.
    With trees, the prerequisites-first walk is there exactly when a goal requires a step."""
    from models.planner import _BIGGEST, _LADDER, _UNLOCK, _Tree

    linear = ModelScorer(linear_bundle, CATALOG)
    trees = ModelScorer(dataclasses.replace(linear_bundle, readiness=linear_bundle.drop), CATALOG)
    assert _Tree(CATALOG, linear, 0.8, 6, 0.95).walks == (_LADDER,)
    assert _Tree(CATALOG, trees, 0.8, 6, 0.95).walks == (_LADDER, _BIGGEST)
    gated = Catalog.from_data(
        [
            {"id": "intro", "stage": "start", "effort": 1},
            {"id": "clip", "stage": "deliver", "effort": 2},
            {"id": "account", "stage": "build", "effort": 3, "requires": ["intro"]},
            {"id": "buy", "stage": "convert", "effort": 5, "goal": True, "requires": ["account"]},
        ]
    )
    assert _Tree(gated, linear, 0.8, 6, 0.95).walks == (_LADDER,)
    assert _Tree(gated, trees, 0.8, 6, 0.95).walks == (_LADDER, _BIGGEST, _UNLOCK)
    # nor does it discount later asks: that counters what trees over-rate
    assert _Tree(CATALOG, linear, 0.8, 6, 0.95).discount == 1.0
    assert _Tree(CATALOG, trees, 0.8, 6, 0.95).discount == 0.95
