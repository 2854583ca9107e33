"""The one LightGBM recipe every tree model here is fitted with.

Readiness and the value model differ in their objective and in what they add (categorical
smoothing for readiness), not in how a tree is grown: keeping the shared part in one place keeps
their determinism and their small-log guard the same.
"""

from __future__ import annotations

from typing import Any


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
