"""Readiness estimators: scikit-learn conformance, calibration and quality on simulated logs.

``parametrize_with_checks`` runs scikit-learn's estimator checks. The checks each estimator is
known to fail are listed in ``EXPECTED_FAILED`` with the reason; they run as xfail (non-strict),
so fixing the estimator turns them into XPASS rather than breaking the suite.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from evaluation import evaluate as ev
from features.events import validate_frame
from features.offline import build_offline_features
from features.spec import FeatureSpec
from models.readiness import (
    READINESS_MONOTONE,
    LogisticBaseline,
    ReadinessModel,
    fit_bundle,
    readiness_monotone,
)
from simulation.simulate import generate_log
from simulation.worlds import load_world

# ReadinessModel is binary-only (its tags say so); the few checks below still fail for the
# documented reasons and run as non-strict xfail, so fixing the estimator shows as XPASS.
_BINARY_ONLY = "binary-only"
EXPECTED_FAILED: dict[str, dict[str, str]] = {
    "ReadinessModel": {
        "check_dtype_object": _BINARY_ONLY + "; and type_of_target(y, raise_unknown=True)",
        "check_all_zero_sample_weights_error": "fit does not validate sample_weight "
        "(fix: sklearn.utils.validation._check_sample_weight)",
        "check_sample_weights_shape": "fit does not validate sample_weight's shape "
        "(fix: _check_sample_weight)",
        "check_fit2d_1sample": "one-class error message lacks 'one class' wording",
    },
}


def _expected_failed(estimator) -> dict[str, str]:
    return EXPECTED_FAILED.get(type(estimator).__name__, {})


@parametrize_with_checks(
    [
        ReadinessModel(n_estimators=20, n_jobs=1),
        LogisticBaseline(),
        LogisticBaseline(categorical_features=(0,)),
    ],
    expected_failed_checks=_expected_failed,
)
def test_sklearn_conformance(estimator, check):
    check(estimator)


def test_logistic_baseline_one_hot_encodes_categories_and_scales_numbers():
    """A region code whose effect is not monotone (odd regions accept) is invisible to a slope
    on the code and plain to one coefficient per region; numbers are standardised."""
    rng = np.random.default_rng(0)
    n = 4000
    region = rng.integers(0, 13, n).astype(float)
    income = rng.normal(50_000, 15_000, n)  # a large-scale number: needs scaling
    region[rng.random(n) < 0.05] = np.nan  # missing is its own category
    logit = np.where(np.nan_to_num(region, nan=0) % 2 == 1, 1.5, -1.5) + (income - 50_000) / 15_000
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    X = np.column_stack([region, income])
    tr, te = slice(0, 3000), slice(3000, None)
    onehot = LogisticBaseline(categorical_features=(0,)).fit(X[tr], y[tr])
    ordinal = LogisticBaseline().fit(X[tr], y[tr])
    auc_onehot = ev.binary_metrics(y[te], onehot.predict_proba(X[te])[:, 1])["auc"]
    auc_ordinal = ev.binary_metrics(y[te], ordinal.predict_proba(X[te])[:, 1])["auc"]
    assert auc_onehot > auc_ordinal + 0.1, (auc_onehot, auc_ordinal)
    encoder = onehot.pipeline_[0]
    assert (
        encoder.named_transformers_["categorical"][-1].encoder_.categories_[0].size == 14
    )  # 13 + missing
    assert isinstance(encoder.named_transformers_["numeric"][-1], StandardScaler)
    # a region never seen in training is no error and gets the average region's effect: its
    # readiness is near the mean over known regions for the same income
    known = np.column_stack([np.arange(13.0), np.full(13, 50_000.0)])
    p_known = onehot.predict_proba(known)[:, 1]
    p_new = onehot.predict_proba(np.array([[99.0, 50_000.0]]))[:, 1][0]
    assert p_known.min() < 0.3 and p_known.max() > 0.7  # regions matter a lot
    assert abs(p_new - 0.5) < 0.1, (p_new, p_known)


# -- calibration and quality on simulated logs -----------------------------------------------------
def _features(world, users: int, seed: int, spec: FeatureSpec | None = None):
    frame = pd.DataFrame(generate_log(world, users, seed, with_truth=True))
    truth = frame.pop("true_p_accept").to_numpy()
    frame = frame.drop(columns=["user_type"])
    log = validate_frame(frame, world.catalog, source=f"sim-{seed}")
    spec = spec or FeatureSpec.from_frame(log.frame, log.context_columns)
    F = build_offline_features(log.frame, world.catalog, spec)
    return spec, F, truth


@pytest.fixture(scope="module")
def ladder_data():
    """Train on one population, test on new users of the same world (another seed)."""
    world = load_world("ladder")
    spec, train, _ = _features(world, TRAIN_USERS, seed=21)
    _, test, truth = _features(world, TEST_USERS, seed=22, spec=spec)
    return spec, train, test, truth


TRAIN_USERS = 6000
TEST_USERS = 4000


@pytest.fixture(scope="module")
def fitted(ladder_data):
    spec, train, test, _ = ladder_data
    y = train.accepted.astype(int)
    lgbm = ReadinessModel(
        categorical_features=tuple(spec.categorical_indices), n_jobs=1, random_state=0
    ).fit(train.X, y)
    logreg = LogisticBaseline(categorical_features=tuple(spec.categorical_indices)).fit(train.X, y)
    return lgbm.predict_proba(test.X)[:, 1], logreg.predict_proba(test.X)[:, 1]


@pytest.mark.slow
def test_readiness_is_calibrated_on_new_users(ladder_data, fitted):
    _, _, test, truth = ladder_data
    p, _ = fitted
    y = test.accepted
    ece = ev.expected_calibration_error(y, p)
    floor = ev.expected_calibration_error(y, truth)  # sampling noise alone gives this much
    assert ece < 0.03, (ece, floor)
    assert abs(p.mean() - y.mean()) < 0.02  # the overall level is right


@pytest.mark.slow
def test_lightgbm_is_at_least_as_good_as_logistic_regression(ladder_data, fitted):
    _, _, test, truth = ladder_data
    p_lgbm, p_lr = fitted
    y = test.accepted
    lgbm, lr = ev.binary_metrics(y, p_lgbm), ev.binary_metrics(y, p_lr)
    best = ev.binary_metrics(y, truth)
    assert lgbm["logloss"] <= lr["logloss"] + 0.002, (lgbm, lr)
    assert lgbm["auc"] >= lr["auc"] - 0.002, (lgbm, lr)
    assert lgbm["auc"] > best["auc"] - 0.03, (lgbm, best)  # close to what the truth allows


def test_a_category_level_seen_in_a_few_rows_of_a_large_log_is_shrunk():
    """60,000 rows, eight frequent levels (pass 98% or 93%) and one seen in 40 rows that pass
    at 50%, as a course whose first few offers came in early. With ``cat_l2`` grown with the log
    (60 here) the sparse level's own effect is shrunk toward its neighbours more than with
    LightGBM's fixed 10; the frequent levels keep their difference either way."""

    class FixedCatL2(ReadinessModel):
        def lightgbm_params(self, n_fit: int) -> dict:  # type: ignore[type-arg]
            return {**super().lightgbm_params(n_fit), "cat_l2": 10.0}

    rng = np.random.default_rng(0)
    n = 60_000
    level = rng.integers(0, 8, n).astype(float)
    level[:40] = 8.0
    rate = np.where(level % 2 == 0, 0.98, 0.93)
    rate[:40] = 0.5
    y = (rng.random(n) < rate).astype(int)
    X = np.column_stack([rng.normal(size=n), level])
    probe = np.column_stack([np.zeros(9), np.arange(9.0)])
    kw = {"categorical_features": (1,), "calibration_fraction": 0.0, "n_jobs": 1}
    grown = ReadinessModel(**kw).fit(X, y).predict_proba(probe)[:, 1]
    fixed = FixedCatL2(**kw).fit(X, y).predict_proba(probe)[:, 1]
    assert grown[8] > fixed[8] + 0.03, (grown[8], fixed[8])
    for p in (grown, fixed):
        assert p[[0, 2, 4, 6]].min() > p[[1, 3, 5, 7]].max() + 0.03
    assert ReadinessModel().lightgbm_params(60_000)["cat_l2"] == 60.0
    assert ReadinessModel().lightgbm_params(5_000)["cat_l2"] == 10.0  # LightGBM's default


def test_fit_bundle_keeps_readiness_monotone_in_the_commitment_features():
    """Along every feature of ``READINESS_MONOTONE`` the served readiness (trees and isotonic
    map) moves only the documented way, on rows of a real simulated log; the drop and come-back
    models are left free, and ``params`` can lift the constraint."""
    world = load_world("random:7")
    frame = pd.DataFrame(generate_log(world, 1500, 3))
    log = validate_frame(frame, world.catalog, source="sim-3")
    spec = FeatureSpec.from_frame(log.frame, log.context_columns)
    F = build_offline_features(log.frame, world.catalog, spec)
    is_goal = world.catalog.arrays["is_goal"][F.step_index] > 0
    args = (F.X, F.accepted, F.dropped, F.came_back, is_goal, spec)
    bundle = fit_bundle(*args, typical_gap_hours=24.0, n_jobs=1)
    assert bundle.readiness.monotone_constraints == readiness_monotone(spec.names)
    assert bundle.drop.monotone_constraints is None and bundle.back.monotone_constraints is None
    rows = F.X[:: max(1, len(F.X) // 300)]
    for name, sign in READINESS_MONOTONE.items():
        col = spec.names.index(name)
        grid = np.linspace(0.0, np.nanmax(F.X[:, col]) + 1.0, 6)
        probs = []
        for v in grid:
            X = rows.copy()
            X[:, col] = v
            probs.append(bundle.readiness.predict_proba(X)[:, 1])
        steps = np.diff(np.array(probs), axis=0) * sign
        assert (steps >= -1e-12).all(), name
    free = fit_bundle(
        *args, typical_gap_hours=24.0, n_jobs=1, params={"monotone_constraints": None}
    )
    assert "monotone_constraints" not in free.readiness.booster_.params
