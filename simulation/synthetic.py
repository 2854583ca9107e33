"""A model bundle trained straight on a simulated log, without MLflow.

Tests, notebooks and benchmarks need "a real model for this world" in seconds; this is the one
place that wires simulator → point-in-time features → ``fit_bundle`` for them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from features.catalog import Catalog
from features.offline import build_offline_features, typical_gap_hours
from features.spec import FeatureSpec
from features.transitions import goal_worth_earned, logged_transitions
from models.bundle import ModelBundle
from models.readiness import fit_bundle
from simulation.simulate import generate_log
from simulation.worlds import World


def simulated_bundle(
    world: World,
    users: int,
    seed: int,
    *,
    params: Mapping[str, Any] | None = None,
    n_jobs: int | None = None,
) -> ModelBundle:
    """Fit the readiness, drop and come-back models on ``users`` simulated users of ``world``."""
    frame = pd.DataFrame(generate_log(world, users, seed))
    frame["row"] = np.arange(1, len(frame) + 1)
    return bundle_from_frame(
        frame, world.catalog, ["channel", "device"], seed=seed, params=params, n_jobs=n_jobs
    )


def bundle_from_frame(
    frame: pd.DataFrame,
    catalog: Catalog,
    context_columns: Sequence[str],
    *,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
    n_jobs: int | None = None,
) -> ModelBundle:
    """Fit the three outcome models on an event frame (a validated log's ``frame``) as ``nextstep
    train`` fits them on its training rows: the log's median return gap, each offer's time and
    user (so readiness backtests its calibration slice), no holdout and no MLflow."""
    spec = FeatureSpec.from_frame(frame, list(context_columns))
    off = build_offline_features(frame, catalog, spec)
    is_goal = catalog.arrays["is_goal"][off.step_index] > 0
    return fit_bundle(
        off.X,
        off.accepted,
        off.dropped,
        off.came_back,
        is_goal,
        spec,
        typical_gap_hours=typical_gap_hours(frame),
        seed=seed,
        params=params,
        n_jobs=n_jobs,
        ts=off.ts,
        users=pd.factorize(frame["user_id"])[0],
        transitions=logged_transitions(frame, catalog, spec, off),
        earned=goal_worth_earned(catalog, off),
    )
