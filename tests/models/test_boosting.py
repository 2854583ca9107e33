"""How many threads a LightGBM fit gets: one for small fits, every core for large ones, and
the caller's number when given. Small fits with the default must be the single-threaded fit."""

from __future__ import annotations

import os

import numpy as np
import pytest

from models.boosting import PARALLEL_ROWS, threads_for
from models.readiness import ReadinessModel


@pytest.mark.parametrize(
    ("rows", "n_jobs", "expected"),
    [
        (10, None, 1),
        (PARALLEL_ROWS - 1, None, 1),
        (PARALLEL_ROWS, None, max(1, os.cpu_count() or 1)),
        (10, 3, 3),
        (PARALLEL_ROWS * 2, 1, 1),
        (10, 0, 1),
        (PARALLEL_ROWS, 0, max(1, os.cpu_count() or 1)),
        (10, -1, max(1, os.cpu_count() or 1)),
        (10, -(os.cpu_count() or 1) - 5, 1),
    ],
)
def test_threads_follow_the_fits_size_unless_given(
    rows: int, n_jobs: int | None, expected: int
) -> None:
    assert threads_for(rows, n_jobs) == expected


def test_a_small_fit_by_default_is_the_single_threaded_fit() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 5))
    y = (X[:, 0] + rng.normal(size=3000) > 0).astype(int)
    by_size = ReadinessModel(n_estimators=30).fit(X, y).predict_proba(X)
    single = ReadinessModel(n_estimators=30, n_jobs=1).fit(X, y).predict_proba(X)
    two = ReadinessModel(n_estimators=30, n_jobs=2).fit(X, y)
    np.testing.assert_array_equal(by_size, single)
    assert two.booster_.params["num_threads"] == 2
    assert ReadinessModel().get_params()["n_jobs"] is None  # scikit-learn's "not chosen"
