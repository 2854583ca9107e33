"""The value of offering a step now, learned from logged transitions (fitted Q iteration).

The planner's look-ahead values the future by walking the outcome models along a few hand-shaped
paths (up the ladder, by the biggest warm-up, prerequisites first). Where the best path has
another shape (a climb through the steps that deliver value, in a funnel where accumulated value
makes the goal easier) no walk sees it. Fitted Q iteration needs no path shape: the value of an
offer is what it earned (the goal's worth when a goal was accepted) plus the value of the best
offer at the user's next logged visit, and iterating "fit, then back up through the fit" carries
the goal's worth back along every path the log walked, as far as the longest user's run. Where the
user made no further offer (dropped, left, or the horizon ended) the future is worth nothing: the
log itself says how the funnel ends, with no model of drop, return or horizon.

Each iteration is one LightGBM fit of the readiness recipe with a cross-entropy objective on
targets in [0, 1] (goal worths are scaled by the largest), so a prediction is an expected share of
the best goal's worth.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from features.transitions import Transitions
from models.boosting import threads_for, tree_params

_CHUNK = 1 << 18  # candidate rows scored per call: memory stays a slice, not the whole set


class FittedQ(RegressorMixin, BaseEstimator):
    """Q(state, step) by fitted Q iteration with gradient-boosted trees.

    ``fit(X, y, transitions=...)``: ``X`` holds the logged offers' feature rows, ``y`` what each
    earned (a goal's worth when a goal was accepted, else 0), and ``transitions`` (see
    ``features.transitions``) every logged state's candidate rows and each row's next row.
    ``n_iterations`` backups are made (None: the longest user's number of offers, at most
    ``max_iterations``). ``n_jobs``: LightGBM's threads (None: by size, ``models.boosting``).
    Learned: ``booster_``, ``scale_`` (the worth a prediction of 1 means),
    ``n_iterations_``.
    """

    def __init__(
        self,
        *,
        n_iterations: int | None = None,
        max_iterations: int = 30,
        n_estimators: int = 150,
        learning_rate: float = 0.08,
        num_leaves: int = 15,
        min_child_samples: int = 40,
        reg_lambda: float = 1.0,
        random_state: int = 0,
        n_jobs: int | None = None,
    ) -> None:
        self.n_iterations = n_iterations
        self.max_iterations = max_iterations
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.reg_lambda = reg_lambda
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(self, X: Any, y: Any, *, transitions: Transitions) -> FittedQ:
        import lightgbm as lgb

        X = np.asarray(X, dtype=np.float64)
        earned = np.asarray(y, dtype=np.float64)
        tr = transitions
        n = len(earned)
        self.scale_ = float(earned.max()) if n and earned.max() > 0 else 1.0
        r = earned / self.scale_
        nxt = tr.next_row
        has_next = (nxt >= 0) & (r == 0)  # an accepted goal ends the user's funnel
        self.n_iterations_ = self.n_iterations or min(self.max_iterations, _longest_run(nxt))
        params = {
            **tree_params(
                "cross_entropy",
                learning_rate=self.learning_rate,
                num_leaves=self.num_leaves,
                min_child_samples=self.min_child_samples,
                reg_lambda=self.reg_lambda,
                random_state=self.random_state,
                n_fit=n,
            ),
            "num_threads": threads_for(n, self.n_jobs),
        }
        v = np.zeros(n)  # value of the best offer in the state before each row
        booster = None
        for _ in range(max(1, self.n_iterations_)):
            target = np.clip(r + np.where(has_next, v[np.maximum(nxt, 0)], 0.0), 0.0, 1.0)
            data = lgb.Dataset(X, label=target, params={"verbosity": -1})
            booster = lgb.train(params, data, num_boost_round=self.n_estimators)
            v = np.zeros(n)
            for a in range(0, len(tr), _CHUNK):
                b = min(len(tr), a + _CHUNK)
                q = booster.predict(tr.rows(a, b), num_threads=params["num_threads"])
                np.maximum.at(v, tr.node[a:b], q)
        self.booster_ = booster
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Expected goal worth of each row's offer, in the goals' own units."""
        check_is_fitted(self)
        X = np.asarray(X, dtype=np.float64)
        threads = threads_for(len(X), self.n_jobs)
        return self.calibrate(self.booster_.predict(X, num_threads=threads))

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """The booster's output (a share of the best goal's worth) in the goals' units: what
        the scorer applies to the native predictor's numbers, as it calibrates the others."""
        return raw * self.scale_


def _longest_run(next_row: np.ndarray) -> int:
    """The most offers any one user made: the length of the longest ``next_row`` chain."""
    has_prev = np.zeros(len(next_row), dtype=bool)
    has_prev[next_row[next_row >= 0]] = True
    cur = np.flatnonzero(~has_prev)  # every run's first row
    steps = 0
    while len(cur):
        steps += 1
        cur = next_row[cur]
        cur = cur[cur >= 0]
    return steps
