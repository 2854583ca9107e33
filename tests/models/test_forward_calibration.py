"""Which slice calibrates (a backtest inside the training rows), calibration on the latest slice
and the learned prior for a new step (``models.forward_calibration``,
``ReadinessModel.fit(..., ts=...)``)."""

from __future__ import annotations

import numpy as np

from evaluation import evaluate as ev
from models import forward_calibration as fc
from models.readiness import ReadinessModel


def test_latest_split_calibrates_on_the_latest_rows_ties_by_position():
    ts = np.array([5.0, 1.0, 3.0, 3.0, 2.0, 4.0, 3.0, 0.0, 6.0, 3.0])
    fit, cal = fc.latest_split(ts, 0.3)
    assert sorted(cal.tolist()) == [0, 5, 8]  # times 5, 4, 6
    assert sorted(fit.tolist()) == [1, 2, 3, 4, 6, 7, 9]
    fit, cal = fc.latest_split(ts, 0.5)  # of the four rows at time 3, the last two calibrate
    assert sorted(cal.tolist()) == [0, 5, 6, 8, 9]


def test_backtest_split_plays_the_latest_rows_as_the_future():
    rng = np.random.default_rng(0)
    ts = rng.permutation(100).astype(float)
    fit, rand, latest, future = fc.backtest_split(ts, 0.2, rng)
    assert sorted(np.concatenate([fit, rand, latest, future]).tolist()) == list(range(100))
    assert len(rand) == len(latest) == len(future) == 20
    assert ts[future].min() == 80 and ts[latest].min() == 60 and ts[latest].max() == 79
    assert ts[rand].max() < 60 and ts[fit].max() < 60  # the random slice is from the past


def test_the_latest_slice_must_win_by_more_than_noise():
    rng = np.random.default_rng(1)
    y = (rng.random(20_000) < 0.8).astype(float)
    right, off = np.full(len(y), 0.8), np.full(len(y), 0.85)
    assert fc.latest_calibrates_better(y, p_random=off, p_latest=right)
    assert not fc.latest_calibrates_better(y, p_random=right, p_latest=off)
    jitter = np.clip(0.8 + rng.normal(0, 1e-4, len(y)), 0, 1)  # a difference within noise
    assert not fc.latest_calibrates_better(y, p_random=right, p_latest=jitter)


def test_the_clustered_error_counts_users_not_rows():
    """40 users of 50 rows each: the latest slice is better for every row of 24 users and
    worse for every row of 16. Read as 2,000 independent rows the gain is clear (z about 4);
    read as 40 users it is well within noise, so the random slice stays."""
    users = np.repeat(np.arange(40), 50)
    y = np.ones(len(users))
    p_random = np.full(len(users), 0.5)
    p_latest = np.where(users < 24, 0.6, 0.4)
    assert fc.latest_calibrates_better(y, p_random, p_latest)  # per-row error
    assert not fc.latest_calibrates_better(y, p_random, p_latest, users)
    # one row per user: the clustered error is the per-row one
    rows = np.arange(len(users))
    assert fc.latest_calibrates_better(y, p_random, p_latest, rows)
    gain = np.where(users < 24, np.log(0.6 / 0.5), np.log(0.4 / 0.5))
    assert np.isclose(fc.clustered_se(gain, rows), fc.row_se(gain))
    assert fc.clustered_se(gain, users) > 5 * fc.row_se(gain)
    assert fc.clustered_se(gain, np.zeros(len(gain))) == float("inf")


def test_new_values_are_codes_the_earlier_rows_never_had():
    seen = np.array([0.0, 1.0, np.nan, 1.0])
    values = np.array([1.0, 2.0, np.nan, 0.0, 3.0])
    assert fc.new_values(seen, values).tolist() == [False, True, False, False, True]
    rng = np.random.default_rng(0)
    X = np.zeros((10_000, 2))
    hidden = fc.hide_at_rate(X, 1, 0.25, rng)
    assert np.isnan(hidden[:, 0]).sum() == 0
    assert abs(np.isnan(hidden[:, 1]).mean() - 0.25) < 0.02
    assert fc.hide_at_rate(X, 1, 0.0, rng) is X


def _drifting_log(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One informative feature; the acceptance level slides down over time (a feature the
    model does not have), as a pass rate does from one intake to the next."""
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.uniform(0, 1, n))
    x = rng.normal(size=(n, 3))
    logit = 2.5 + 1.2 * x[:, 0] - 2.0 * ts
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return x, y, ts


def test_calibrating_on_the_latest_slice_follows_a_drifting_level():
    """Trained on [0, 0.8), scored on [0.8, 1): the latest slice's level is nearer the future's
    than a random slice's average over the whole past, so the calibration error is smaller."""
    X, y, ts = _drifting_log(30_000, 3)
    tr, ho = ts < 0.8, ts >= 0.8
    kw = {"n_estimators": 60, "n_jobs": 1, "random_state": 0}
    latest = ReadinessModel(**kw).fit(X[tr], y[tr], ts=ts[tr])
    random = ReadinessModel(**kw).fit(X[tr], y[tr])
    assert latest.calibration_slice_ == "latest"  # the backtest saw the level drift
    assert random.calibration_slice_ == "random"  # no times: nothing to backtest
    p_latest = latest.predict_proba(X[ho])[:, 1]
    p_random = random.predict_proba(X[ho])[:, 1]
    gap_latest = abs(p_latest.mean() - y[ho].mean())
    gap_random = abs(p_random.mean() - y[ho].mean())
    assert gap_latest < gap_random - 0.01, (gap_latest, gap_random)
    ece_latest = ev.expected_calibration_error(y[ho], p_latest)
    ece_random = ev.expected_calibration_error(y[ho], p_random)
    assert ece_latest < ece_random, (ece_latest, ece_random)


def test_a_log_that_does_not_drift_keeps_the_random_slice():
    """Same log without the drift: the backtest finds no clear gain in the latest slice, so the
    fit with times is exactly the fit without (same random slice, same trees)."""
    rng = np.random.default_rng(4)
    n = 30_000
    ts = np.sort(rng.uniform(0, 1, n))
    X = rng.normal(size=(n, 3))
    y = (rng.random(n) < 1 / (1 + np.exp(-(1.5 + 1.2 * X[:, 0])))).astype(int)
    kw = {"n_estimators": 60, "n_jobs": 1, "random_state": 0}
    with_times = ReadinessModel(**kw).fit(X, y, ts=ts)
    assert with_times.calibration_slice_ == "random"
    without = ReadinessModel(**kw).fit(X, y)
    np.testing.assert_array_equal(with_times.predict_proba(X[:500]), without.predict_proba(X[:500]))
    again = ReadinessModel(**kw).fit(X, y, ts=ts)  # deterministic given the seed
    np.testing.assert_array_equal(with_times.predict_proba(X[:500]), again.predict_proba(X[:500]))


def _steps_log(n: int, seed: int, late_steps: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Columns: an attribute (0 easy, 1 hard), the step id (categorical). Steps 0-3 are easy,
    4-7 hard; each step has its own appeal around its attribute's level. With ``late_steps``
    steps 3 and 7 exist only in the last 15% of the log (new content)."""
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.uniform(0, 1, n))
    step = rng.integers(0, 8, n)
    if late_steps:
        early = ts < 0.85
        step[early & (step == 3)] = 2
        step[early & (step == 7)] = 6
    hard = (step >= 4).astype(float)
    appeal = np.array([0.3, -0.3, 0.2, -0.2, 0.3, -0.3, 0.2, -0.2])
    logit = 1.5 - 2.5 * hard + appeal[step]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return np.column_stack([hard, step.astype(float)]), y, ts


def test_a_new_step_gets_the_prior_of_its_attributes():
    """When the latest slice meets steps the earlier rows never had, the trees learn the
    missing step id at that rate, so a step new to the model (NaN) is scored at its attribute's
    level; without new steps in the slice nothing is hidden and the fit is the plain one."""
    X, y, ts = _steps_log(40_000, 5, late_steps=True)
    kw = {"categorical_features": (1,), "n_estimators": 60, "n_jobs": 1, "random_state": 0}
    model = ReadinessModel(step_feature=1, **kw).fit(X, y, ts=ts)
    share_new = np.isin(X[ts >= np.quantile(ts, 0.8), 1], [3, 7]).mean()
    assert abs(model.new_step_rate_ - share_new) < 0.02, (model.new_step_rate_, share_new)
    new = np.array([[0.0, np.nan], [1.0, np.nan]])
    p_new = model.predict_proba(new)[:, 1]
    for attr, p in zip((0.0, 1.0), p_new, strict=True):
        level = y[X[:, 0] == attr].mean()
        assert abs(p - level) < 0.06, (attr, p, level)

    X, y, ts = _steps_log(20_000, 6, late_steps=False)
    with_step = ReadinessModel(step_feature=1, **kw).fit(X, y, ts=ts)
    without = ReadinessModel(**kw).fit(X, y, ts=ts)
    assert with_step.new_step_rate_ == 0.0
    np.testing.assert_array_equal(with_step.predict_proba(X[:500]), without.predict_proba(X[:500]))


def test_the_served_trees_learn_from_the_latest_slice_too():
    """When the latest slice calibrates, the trees are refitted on every row: a pattern found
    only in that slice is still in the served model."""
    rng = np.random.default_rng(8)
    n = 30_000
    ts = np.sort(rng.uniform(0, 1, n))
    x = rng.normal(size=(n, 3))
    late = ts >= 0.85  # inside the latest 20%
    x[~late, 1] = -5.0  # the second column only varies late, where it decides
    logit = 2.5 + 1.2 * x[:, 0] - 2.0 * ts + np.where(late, 2.0 * x[:, 1], 0.0)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    model = ReadinessModel(n_estimators=60, n_jobs=1).fit(x, y, ts=ts)
    assert model.calibration_slice_ == "latest"
    p = model.predict_proba(np.array([[0.0, -1.5, 0.0], [0.0, 1.5, 0.0]]))[:, 1]
    assert p[1] - p[0] > 0.5, p


def test_only_readiness_backtests_its_slice_drop_and_back_are_censored_by_the_log_end():
    """Drop and come-back are labelled by a later event, so the log's last rows look like users
    who left. Given the times, readiness (whose level drifts here) calibrates on the latest slice;
    drop and come-back, whose only drift is that censoring, calibrate on a random slice, exactly
    as they would without times."""
    from features.spec import FeatureSpec
    from models.readiness import fit_bundle

    rng = np.random.default_rng(9)
    n = 30_000
    spec = FeatureSpec()
    ts = np.sort(rng.uniform(0, 1, n))
    X = rng.normal(size=(n, len(spec.names)))
    accepted = rng.random(n) < 1 / (1 + np.exp(-(2.5 + 1.2 * X[:, 0] - 2.0 * ts)))
    # a user's next event comes some time later; the nearer the log's end, the likelier it
    # is not in the log yet
    censored = rng.random(n) < np.exp(-(1 - ts) / 0.15)
    came_back = (rng.random(n) < 0.85) & ~censored
    dropped = ~accepted & (rng.random(n) < 0.2)
    is_goal = np.zeros(n, bool)
    kw = {"typical_gap_hours": 24.0, "n_jobs": 1, "params": {"n_estimators": 40}}
    args = (X, accepted, dropped, came_back, is_goal, spec)
    with_times = fit_bundle(*args, ts=ts, users=np.arange(n), **kw)
    without = fit_bundle(*args, **kw)
    assert with_times.readiness.calibration_slice_ == "latest"
    for name in ("drop", "back"):
        model, plain = getattr(with_times, name), getattr(without, name)
        assert model.calibration_slice_ == "random", name
        np.testing.assert_array_equal(model.predict_proba(X[-500:]), plain.predict_proba(X[-500:]))
