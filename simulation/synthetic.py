"""A model bundle trained straight on a simulated log, without MLflow.

Tests, notebooks and benchmarks need "a real model for this world" in seconds; this is the one
place that wires simulator → point-in-time features → the models ``train`` fits for them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from features.catalog import Catalog
from features.offline import build_offline_features
from features.spec import FeatureSpec
from models.bundle import ModelBundle
from simulation.simulate import generate_log
from simulation.worlds import World
from training.pipeline import fit_on_every_row


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
    """Fit the outcome models and the value model on every row of an event frame (a validated
    log's ``frame``) as ``nextstep train --refit`` fits them, no holdout and no MLflow. The
    layout is learned from every row and has no step-id feature (``train``'s default adds it)."""
    spec = FeatureSpec.from_frame(frame, list(context_columns))
    off = build_offline_features(frame, catalog, spec)
    return fit_on_every_row(frame, catalog, spec, off, seed=seed, params=params, n_jobs=n_jobs)
