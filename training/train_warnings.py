"""Warnings ``nextstep train`` prints (and tags on the MLflow run) when the result is suspect.

Training succeeds on almost anything: 7 rows from 2 users fit, register and can be promoted.
Two situations deserve a word before anyone serves the model:

* too little data: fewer than ``MIN_ROWS`` offers or ``MIN_USERS`` users, where the time-based
  holdout holds a handful of users and its metrics are noise;
* the logistic-regression baseline has a lower holdout log loss than LightGBM: the tree model
  is overfitting (or the data carry little signal). The bundle still serves LightGBM unless
  ``--readiness-model`` says otherwise (``training.pipeline.DEFAULT_READINESS`` says why); the
  warning says which one it serves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from training import tracking

MIN_ROWS = 1000
MIN_USERS = 100
WARNINGS_TAG = "nextstep.warnings"


def training_warnings(
    metrics: Mapping[str, Mapping[str, float]],
    fingerprint: Mapping[str, Any],
    served: str = "lightgbm",
) -> list[str]:
    """The warnings for one training result (empty when nothing is suspect)."""
    out = []
    rows, users = int(fingerprint.get("rows", 0)), int(fingerprint.get("users", 0))
    if rows < MIN_ROWS or users < MIN_USERS:
        out.append(
            f"too little data: {rows} rows from {users} users (at least {MIN_ROWS} rows from "
            f"{MIN_USERS} users are needed for holdout metrics that mean anything); treat this "
            "model as a smoke test"
        )
    lgbm = metrics.get("lgbm", {}).get("logloss", math.nan)
    logreg = metrics.get("logreg", {}).get("logloss", math.nan)
    if math.isfinite(lgbm) and math.isfinite(logreg) and logreg < lgbm:
        out.append(
            f"the logistic baseline beats LightGBM on the holdout (log loss {logreg:.3f} vs "
            f"{lgbm:.3f}): "
            + (
                "the bundle serves the logistic model as --readiness-model asked; "
                if served == "logistic"
                else "the bundle serves LightGBM all the same (a lower log loss does not make "
                "the planner decide better; --readiness-model auto serves the baseline then); "
            )
            + "LightGBM overfits or the data carry little non-linear signal (get more data, "
            "or fewer, shallower trees)"
        )
    return out


def record_warnings(run_id: str, warnings: list[str]) -> None:
    """Tag the training run with its warnings (``nextstep.warnings``), so the MLflow UI and
    ``promote`` readers see them too."""
    if not warnings:
        return

    tracking.client().set_tag(run_id, WARNINGS_TAG, " | ".join(warnings))
