"""Readiness = P(accept | state, step, context), and the other outcome models.

``ReadinessModel`` is a LightGBM classifier calibrated with isotonic regression on a held-out
slice of its training data: the planner multiplies these probabilities along imagined paths, so
they must be right in level, not only in order. Given the offers' times, the slice is the latest
one when a backtest shows the level drifting (``models.forward_calibration``). It follows the
scikit-learn estimator API so ``clone``, pipelines and ``parametrize_with_checks`` work.
``LogisticBaseline`` is the honest yardstick on the same features (categories one-hot encoded,
numbers scaled). The same ``ReadinessModel`` class also fits P(drop | decline) and P(comes
back | accept): they are binary outcome models over the same feature rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from features.spec import FeatureSpec
from features.transitions import Transitions
from models import forward_calibration as fc
from models.boosting import threads_for, tree_params
from models.bundle import ModelBundle
from models.calibration import EPS, TIE_BREAK, calibrated
from models.fitted_q import FittedQ

__all__ = [
    "EPS",
    "READINESS_MONOTONE",
    "TIE_BREAK",
    "LogisticBaseline",
    "ReadinessModel",
    "fit_bundle",
    "readiness_monotone",
]

# The direction readiness may move along a state feature, everything else held equal: the
# micro-commitment premise itself. Accepts in a row build momentum and value delivered makes the
# next ask easier; declines in a row build resistance, and so does a jump in effort past the
# largest step accepted. The log alone cannot teach the trees these directions where the
# incumbent seldom went (a big ask after a run of accepts, a warm-up after three declines), and
# those are the states a look-ahead plans through. Constrained, the planner gave up 0.0032 less
# of the type-blind reference per user (decision regret, SE 0.0015, paired over 119 worlds of
# ``random:0..119``), and readiness's log loss on new users fell by 0.0007 (SE 0.0003, 20 worlds).
READINESS_MONOTONE: Mapping[str, int] = {
    "cons_accepts": 1,
    "value_received": 1,
    "cons_declines": -1,
    "effort_gap": -1,
}


def readiness_monotone(names: Sequence[str]) -> tuple[int, ...]:
    """LightGBM's ``monotone_constraints`` for feature columns ``names``: the direction of
    ``READINESS_MONOTONE`` for its features, 0 (free) for every other column."""
    return tuple(READINESS_MONOTONE.get(n, 0) for n in names)


class ReadinessModel(ClassifierMixin, BaseEstimator):
    """Calibrated LightGBM binary classifier.

    How it is calibrated (``fit``): the trees are fitted on all rows but a calibration slice,
    score that slice, and the isotonic map is fitted to those out-of-sample scores. The slice is
    a random ``calibration_fraction`` of the rows, or, given the offers' times
    (``fit(..., ts=...)``) and when a backtest inside the training rows shows the level
    drifting, the latest one, closest to serving time. The latest slice holds the newest offers,
    so the served trees are then fitted again on every row with the same parameters and the map
    is kept: it describes how a model of this recipe scores rows it has not seen, which is what
    serving is (scikit-learn's ``CalibratedClassifierCV`` with ``ensemble=False`` does the same
    with folds).
    ``step_feature`` names the ``step_id`` column, whose missing value (a step new to the model)
    is learned at the rate the slice meets steps new to it (``models.forward_calibration``).

    Parameters are stored untouched in ``__init__`` (scikit-learn convention); learned
    attributes end in ``_``: ``booster_`` (the native LightGBM booster, called directly on the hot
    path), ``calibrator_`` (isotonic map from raw to calibrated probability or None),
    ``new_step_rate_`` (the share of training rows whose step id was hidden),
    ``calibration_slice_`` (``"latest"``, ``"random"``, or None when nothing calibrates).
    ``n_jobs``: LightGBM's threads; None chooses by the fit's size (``models.boosting``).
    """

    def __init__(
        self,
        *,
        n_estimators: int = 150,
        learning_rate: float = 0.08,
        num_leaves: int = 15,
        min_child_samples: int = 40,
        reg_lambda: float = 1.0,
        categorical_features: tuple[int, ...] | None = None,
        calibration_fraction: float = 0.2,
        step_feature: int | None = None,
        monotone_constraints: tuple[int, ...] | None = None,
        random_state: int = 0,
        n_jobs: int | None = None,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.reg_lambda = reg_lambda
        self.categorical_features = categorical_features
        self.calibration_fraction = calibration_fraction
        self.step_feature = step_feature
        self.monotone_constraints = monotone_constraints
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(
        self, X: Any, y: Any, sample_weight: Any = None, ts: Any = None, users: Any = None
    ) -> ReadinessModel:
        """Fit and calibrate (see the class docstring); ``ts``: each row's time, ``users``: each
        row's user (the backtest's error is clustered by user), both optional."""
        X, y = validate_data(self, X, y, ensure_all_finite="allow-nan", dtype=np.float64)
        if type_of_target(y) not in ("binary",) and len(np.unique(y)) != 1:
            raise ValueError(f"Only binary classification is supported, got {type_of_target(y)}")
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError("needs samples of both classes to fit a readiness model")
        n = len(y_enc)
        w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        rng = np.random.default_rng(self.random_state)
        self.new_step_rate_ = 0.0
        self.calibration_slice_: str | None = None
        if not self.calibrates(n):
            self.booster_ = self._train(X, y_enc, w)
            self.fit_calibration(None, None)
            return self
        step = self.step_feature if self.step_feature is not None else -1
        self.calibration_slice_ = "random"
        # (earlier rows, latest slice) in time order: the forward split, whichever slice calibrates
        forward = None if ts is None else fc.latest_split(np.asarray(ts), self.calibration_fraction)
        if ts is not None and self._latest_calibrates_better(X, y_enc, w, ts, users, step):
            self.calibration_slice_ = "latest"
        if forward is not None and self.calibration_slice_ == "latest":
            fit_idx, cal_idx = forward
        else:
            fit_idx, cal_idx = fc.random_split(n, self.calibration_fraction, rng)
        X_cal = X[cal_idx]
        if forward is not None and 0 <= step < X.shape[1]:
            # how often serving meets a new step: as often as the latest slice meets steps the
            # earlier rows never had, whichever slice calibrates
            earlier, latest = forward
            self.new_step_rate_ = float(fc.new_values(X[earlier, step], X[latest, step]).mean())
            if self.calibration_slice_ == "latest":  # as serving sees a step new to the model
                X_cal[fc.new_values(X[fit_idx, step], X_cal[:, step]), step] = np.nan
            X = fc.hide_at_rate(X, step, self.new_step_rate_, rng)
            if self.calibration_slice_ == "random":
                X_cal = X[cal_idx]  # hidden as often as in the rows that fit
        fit_w = None if w is None else w[fit_idx]
        trees = self._train(X[fit_idx], y_enc[fit_idx], fit_w)
        self.fit_calibration(
            trees.predict(X_cal, num_threads=threads_for(n, self.n_jobs)), y_enc[cal_idx]
        )
        # the latest slice holds the newest offers (new steps, the current level): the served
        # trees must learn from them too; a random slice is only a fifth fewer of the same rows
        latest = self.calibration_slice_ == "latest"
        self.booster_ = self._train(X, y_enc, w) if latest else trees
        return self

    def _latest_calibrates_better(
        self, X: np.ndarray, y: np.ndarray, w: np.ndarray | None, ts: Any, users: Any, step: int
    ) -> bool:
        """The backtest of ``models.forward_calibration``: one set of trees, two calibration
        slices, scored on the latest rows (steps new to the trees' rows scored as new)."""
        rng = np.random.default_rng([self.random_state, 1])
        fit, rand, latest, future = fc.backtest_split(
            np.asarray(ts), self.calibration_fraction, rng
        )
        if min(len(rand), len(latest), len(future)) == 0 or len(np.unique(y[fit])) < 2:
            return False
        X_latest, X_future = X[latest], X[future]
        if 0 <= step < X.shape[1]:
            for part in (X_latest, X_future):
                part[fc.new_values(X[fit, step], part[:, step]), step] = np.nan
        trees = self._train(X[fit], y[fit], None if w is None else w[fit])
        threads = threads_for(len(y), self.n_jobs)
        raw_future = trees.predict(X_future, num_threads=threads)
        p = {}
        for name, rows, X_cal in (("random", rand, X[rand]), ("latest", latest, X_latest)):
            _, knots_x, knots_y = _isotonic_map(trees.predict(X_cal, num_threads=threads), y[rows])
            p[name] = calibrated(raw_future, knots_x, knots_y)
        users_future = None if users is None else np.asarray(users)[future]
        return fc.latest_calibrates_better(y[future], p["random"], p["latest"], users_future)

    def _train(self, X: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> Any:
        """The LightGBM booster of this recipe on ``X``, ``y`` (weights ``w``)."""
        import lightgbm as lgb

        cats = [c for c in (self.categorical_features or ()) if c < X.shape[1]]
        data = lgb.Dataset(
            X,
            label=y,
            weight=w,
            categorical_feature=cats or "auto",
            free_raw_data=True,
            params={"verbosity": -1},
        )
        params = {**self.lightgbm_params(len(y)), "num_threads": threads_for(len(y), self.n_jobs)}
        return lgb.train(params, data, num_boost_round=self.n_estimators)

    def calibrates(self, n: int) -> bool:
        """Whether a fit on ``n`` rows holds out ``calibration_fraction`` of them to calibrate
        (fewer than 200 rows are too few to spare)."""
        return self.calibration_fraction > 0 and n >= 200

    def lightgbm_params(self, n_fit: int) -> dict[str, Any]:
        """LightGBM's parameters (its own names) for a fit on ``n_fit`` rows: one recipe for
        this machine's ``fit`` and the Dask engine's (``training.dask_train``), which adds only
        how many threads to use.

        ``cat_l2``, the L2 penalty on the leaf values of a categorical split, grows with the
        log (``n_fit / 1000``, never below LightGBM's 10): a category's own effect is shrunk
        toward its neighbours' until it holds a share of the rows, not a fixed count. In a
        large log a level seen in a few dozen rows (a new course whose first offers came in
        early) can otherwise carry those rows' rate to every later offer of it; levels with a
        real share of the log keep their effect. Categories of up to four values are split one
        against the rest and do not use it.

        ``monotone_constraints`` (one direction per column, as LightGBM's) use LightGBM's
        ``intermediate`` method: it constrains a split only by the leaves it can reach, so it
        costs the trees less fit than ``basic``, and unlike ``advanced`` (LightGBM 4.6) its
        trees were never seen to break a constraint."""
        mono = self.monotone_constraints
        constrained = (
            {"monotone_constraints": list(mono), "monotone_constraints_method": "intermediate"}
            if mono and any(mono)
            else {}
        )
        return {
            **tree_params(
                "binary",
                learning_rate=self.learning_rate,
                num_leaves=self.num_leaves,
                min_child_samples=self.min_child_samples,
                reg_lambda=self.reg_lambda,
                random_state=self.random_state,
                n_fit=n_fit,
            ),
            "min_data_per_group": 20,
            "cat_smooth": 10.0,
            "cat_l2": max(10.0, n_fit / 1000.0),
            **constrained,
        }

    def fit_calibration(self, raw: np.ndarray | None, y: np.ndarray | None) -> None:
        """Fit the isotonic map from the booster's raw scores ``raw`` of held-out rows to their
        labels ``y`` (no calibration when ``raw`` is None or empty)."""
        self.calibrator_ = None
        self.calibration_x_ = self.calibration_y_ = None
        if raw is None or len(raw) == 0:
            return
        self.calibrator_, self.calibration_x_, self.calibration_y_ = _isotonic_map(raw, y)

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan", dtype=np.float64)
        p = self.positive_proba(X)
        return np.column_stack([1.0 - p, p])

    def positive_proba(self, X: np.ndarray) -> np.ndarray:
        """P(positive) for an already-validated float matrix: the hot path (no checks)."""
        return self.calibrate(self.booster_.predict(X, num_threads=1))

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated probabilities from the booster's raw output (``booster_.predict``)."""
        return calibrated(raw, self.calibration_x_, self.calibration_y_)

    def predict(self, X: Any) -> np.ndarray:
        p = self.predict_proba(X)[:, 1]
        return self.classes_[(p >= 0.5).astype(int)]

    def feature_importance(self) -> np.ndarray:
        check_is_fitted(self)
        return self.booster_.feature_importance(importance_type="gain")

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Per-feature SHAP contributions (raw log-odds), last column the bias."""
        check_is_fitted(self)
        return self.booster_.predict(X, pred_contrib=True, num_threads=1)

    def __sklearn_tags__(self):  # type: ignore[no-untyped-def]
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.classifier_tags.multi_class = False
        return tags


class OneHotWithPrior(TransformerMixin, BaseEstimator):
    """One-hot columns in which a value not seen in ``fit`` gets its column's training
    frequencies (the expected one-hot vector) instead of zeros.

    With zeros, a linear model gives a new value (a course that starts after training) the
    effect of "no category at all", which its coefficients never had to make sensible; with the
    frequencies, it gets the average effect of the known ones: the prior."""

    def fit(self, X: Any, y: Any = None) -> OneHotWithPrior:
        self.encoder_ = OneHotEncoder(
            handle_unknown="ignore", sparse_output=False, dtype=np.float64
        ).fit(X)
        self.means_ = self.encoder_.transform(X).mean(axis=0)
        self.bounds_ = np.cumsum([0, *(len(c) for c in self.encoder_.categories_)])
        return self

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        Z = self.encoder_.transform(X)
        for a, b in zip(self.bounds_[:-1], self.bounds_[1:], strict=True):
            unknown = Z[:, a:b].sum(axis=1) == 0
            if unknown.any():
                Z[unknown, a:b] = self.means_[a:b]
        return Z


class LogisticBaseline(ClassifierMixin, BaseEstimator):
    """Logistic regression on the same features, encoded the way a linear model needs them.

    A linear model cannot use a category code as a number (region 0-12 as one slope), so the
    ``categorical_features`` columns are one-hot encoded (missing is its own column; a value not
    seen in training gets the average effect, see ``OneHotWithPrior``); the other columns are
    median-imputed with a missing-value indicator and standardised. One ``ColumnTransformer``
    in a ``Pipeline`` (``pipeline_``).
    """

    def __init__(
        self,
        *,
        categorical_features: tuple[int, ...] | None = None,
        C: float = 1.0,
        max_iter: int = 1000,
        random_state: int = 0,
    ) -> None:
        self.categorical_features = categorical_features
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> LogisticBaseline:
        X, y = validate_data(self, X, y, ensure_all_finite="allow-nan", dtype=np.float64)
        self.classes_ = np.unique(y)
        cats = sorted({int(c) for c in (self.categorical_features or ()) if 0 <= c < X.shape[1]})
        nums = [i for i in range(X.shape[1]) if i not in set(cats)]
        numeric = make_pipeline(
            SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
            StandardScaler(),
        )
        parts: list[tuple[str, Any, list[int]]] = [("numeric", numeric, nums)]
        if cats:
            categorical = make_pipeline(
                SimpleImputer(strategy="constant", fill_value=-1.0, keep_empty_features=True),
                OneHotWithPrior(),
            )
            parts.append(("categorical", categorical, cats))
        self.pipeline_ = make_pipeline(
            ColumnTransformer(parts),
            LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.random_state),
        ).fit(X, y)
        self.n_iter_ = self.pipeline_[-1].n_iter_
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan", dtype=np.float64)
        return self.pipeline_.predict_proba(X)

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan", dtype=np.float64)
        return self.pipeline_.predict(X)

    def __sklearn_tags__(self):  # type: ignore[no-untyped-def]
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags


def fit_bundle(
    X: np.ndarray,
    accepted: np.ndarray,
    dropped: np.ndarray,
    came_back: np.ndarray,
    is_goal: np.ndarray,
    spec: FeatureSpec,
    *,
    typical_gap_hours: float,
    seed: int = 0,
    n_jobs: int | None = None,
    params: Mapping[str, Any] | None = None,
    ts: np.ndarray | None = None,
    users: np.ndarray | None = None,
    transitions: Transitions | None = None,
    earned: np.ndarray | None = None,
) -> ModelBundle:
    """Fit the three outcome models on point-in-time feature rows (``ts``: each row's time,
    so that readiness can calibrate on its latest rows; ``users``: each row's user, so that the
    backtest deciding it counts users, not rows, as witnesses; see ``ReadinessModel``).

    Only readiness gets the times. Drop and come-back are labelled by whether the user has a
    later event, which the end of the log censors: its latest rows look like users who left.
    A forward backtest reads that as a drifting level and calibrates on the censored slice (in
    the learner's windows it did, and the planner then gave up on users who would have come
    back), so these two models calibrate on a random slice.

    * readiness: every offer, label = accepted, monotone in the features of
      ``READINESS_MONOTONE`` (``params={"monotone_constraints": None}`` lifts it);
    * drop: declined or dropped offers, label = the user is gone: dropped, or no later event
      (a user who declines their last offer of a horizon, or simply never returns, is as lost
      to the planner as one who said "stop": counting only explicit drops made every look-ahead
      assume a decline is always followed by another visit);
    * back: accepted non-goal offers, label = the user had a later event;
    * value (with ``transitions``, ``features.transitions``, and ``earned``, each offer's goal
      worth won): the value of offering a step now by fitted Q iteration (``models.fitted_q``).
    """
    cats = tuple(spec.categorical_indices)
    step = spec.names.index("step_id") if spec.step_ids else None
    kw = {
        "categorical_features": cats,
        "step_feature": step,
        "random_state": seed,
        "n_jobs": n_jobs,
        **(params or {}),
    }
    mono = kw.pop("monotone_constraints", readiness_monotone(spec.names))
    readiness = ReadinessModel(**kw, monotone_constraints=mono).fit(
        X, accepted.astype(int), ts=ts, users=users
    )
    no = ~accepted
    gone = dropped | ~came_back
    drop = _fit_optional(X[no], gone[no], kw)
    acc_ng = accepted & ~is_goal.astype(bool)
    back = _fit_optional(X[acc_ng], came_back[acc_ng], kw)
    base_rates = {
        "accept": float(accepted.mean()),
        "drop": float(gone[no].mean()) if no.any() else 0.3,
        "back": float(came_back[acc_ng].mean()) if acc_ng.any() else 0.8,
    }
    value = None
    if transitions is not None and earned is not None and len(earned):
        value = FittedQ(random_state=seed, n_jobs=n_jobs).fit(X, earned, transitions=transitions)
    return ModelBundle(
        readiness=readiness,
        spec=spec,
        drop=drop,
        back=back,
        typical_gap_hours=typical_gap_hours,
        base_rates=base_rates,
        value=value,
    )


def _isotonic_map(
    raw: np.ndarray, y: np.ndarray
) -> tuple[IsotonicRegression, np.ndarray, np.ndarray]:
    """The isotonic map from raw scores to labels, and its knots. The map is piecewise linear:
    ``np.interp`` on its knots (``models.calibration.calibrated``) gives the same numbers without
    scikit-learn's per-call validation (milliseconds on the hot path)."""
    iso = IsotonicRegression(y_min=EPS, y_max=1 - EPS, out_of_bounds="clip").fit(raw, y)
    knots_x = np.asarray(iso.X_thresholds_, dtype=np.float64)
    return iso, knots_x, np.asarray(iso.y_thresholds_, dtype=np.float64)


def _fit_optional(X: np.ndarray, y: np.ndarray, kw: Mapping[str, Any]) -> ReadinessModel | None:
    y = y.astype(int)
    if len(y) < 50 or y.min() == y.max():
        return None
    params = dict(kw)
    params.setdefault("n_estimators", 80)
    return ReadinessModel(**params).fit(X, y)
