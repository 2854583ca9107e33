"""The one LightGBM recipe every tree model here is fitted with.

Readiness and the value model differ in their objective and in what they add (categorical
smoothing for readiness), not in how a tree is grown: keeping the shared part in one place keeps
their determinism and their small-log guard the same.
"""

from __future__ import annotations

import os
from typing import Any

# Fits on fewer rows than this run single-threaded: on a busy 2-core machine two OpenMP threads
# per fit were measured 18x slower (spin-waiting at every barrier) for no gain at this size.
PARALLEL_ROWS = 500_000


def threads_for(n_rows: int, n_jobs: int | None) -> int:
    """LightGBM's ``num_threads`` for a fit or prediction over ``n_rows`` rows: ``n_jobs`` when
    given (negative as in scikit-learn: -1 every core, -2 all but one), else one thread below
    ``PARALLEL_ROWS`` rows and every core above.

    Small fits lose more to OpenMP's barriers than they gain from a second thread, and they lose
    it many times over when other processes share the cores: the value model makes dozens of
    small fits in a row, and with two threads each they stalled for minutes on a loaded CI
    machine."""
    cores = max(1, os.cpu_count() or 1)
    if n_jobs is not None and n_jobs > 0:
        return int(n_jobs)
    if n_jobs is not None and n_jobs < 0:
        return max(1, cores + 1 + int(n_jobs))
    return 1 if n_rows < PARALLEL_ROWS else cores


def tree_params(
    objective: str,
    *,
    learning_rate: float,
    num_leaves: int,
    min_child_samples: int,
    reg_lambda: float,
    random_state: int,
    n_fit: int,
) -> dict[str, Any]:
    """LightGBM's parameters (its own names) for a fit on ``n_fit`` rows.

    A leaf needs ``min_child_samples`` rows, but never more than a tenth of the log: a small log
    (a new catalog's first days) still gets trees with a few splits instead of one leaf. Fits are
    deterministic given ``random_state`` (``deterministic`` with row-wise histograms)."""
    return {
        "objective": objective,
        "learning_rate": learning_rate,
        "num_leaves": num_leaves,
        "min_data_in_leaf": min(min_child_samples, max(1, n_fit // 10)),
        "lambda_l2": reg_lambda,
        "seed": random_state,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
    }
