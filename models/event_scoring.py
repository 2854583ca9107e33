"""Readiness of every offer in a raw event log, with a bundle's own feature layout.

This is what a data scientist expects from the registered model: give it an event log in the
contract's columns (docs/design.md section 4) and get back, per row, the probability the model gives
that offer from the same user's earlier rows only. It lives in ``models`` (not ``training``) so
the MLflow pyfunc, which ships only ``features`` and ``models``, builds its features with exactly
this code.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.catalog import Catalog
from features.events import format_ts, validate_frame
from features.offline import build_offline_features
from features.spec import FeatureSpec

#: What a readiness call needs; other contract columns (``propensity``, ``policy``,
#: ``decision_id``) and context columns are optional.
EVENT_COLUMNS = ("user_id", "ts", "step", "outcome")
OUTPUT_COLUMNS = ("user_id", "ts", "step", "p_accept")


def event_features(frame: pd.DataFrame, catalog: Catalog, spec: FeatureSpec) -> np.ndarray:
    """The feature matrix of a validated frame in ``spec``'s layout; context columns the frame
    lacks are missing values (a model trained with a context field still scores a log without
    it)."""
    missing = [c for c in spec.context_columns if c not in frame.columns]
    if missing:
        frame = frame.assign(**{c: pd.Series([None] * len(frame), dtype=object) for c in missing})
    return np.ascontiguousarray(build_offline_features(frame, catalog, spec).X)


def readiness_of_events(
    readiness: object,
    spec: FeatureSpec,
    catalog: Catalog,
    events: pd.DataFrame,
    *,
    source: str = "model input",
) -> pd.DataFrame:
    """``user_id, ts, step, p_accept`` for every row of a raw event log, in its order.

    ``events`` is validated like a file (bad rows raise ``EventLogError`` naming row and column);
    ``ts`` comes back as ISO-8601 UTC text. ``readiness`` has ``positive_proba(X)``.
    """
    log = validate_frame(events, catalog, source=source)
    frame = log.frame
    X = event_features(frame, catalog, spec)
    p = readiness.positive_proba(X) if len(frame) else np.empty(0)  # type: ignore[attr-defined]
    return pd.DataFrame(
        {
            "user_id": frame["user_id"].astype(object).to_numpy(),
            "ts": format_ts(frame["ts"].to_numpy(dtype=np.float64)),
            "step": frame["step"].astype(object).to_numpy(),
            "p_accept": np.asarray(p, dtype=np.float64),
        }
    )
