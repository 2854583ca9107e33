"""The registered model's signature and input example, in the event-log contract's terms.

A data scientist loading ``models:/nextstep@champion`` reads the signature to learn what to
pass: the contract's event-log columns (docs/design.md section 4), not the model's engineered
features. ``user_id``, ``ts``, ``step`` and ``outcome`` are required; ``ts`` is of any type
(ISO-8601 text or epoch seconds, as in a file) and so is ``user_id`` (ids that look like
numbers). The optional contract columns and the model's context columns are optional and of
any type (MLflow drops a column the signature does not list before ``predict``, so every
context column the model uses is listed). The output is one row per input row:
``user_id, ts, step, p_accept``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features.events import OPTIONAL, format_ts
from features.spec import FeatureSpec
from models.event_scoring import EVENT_COLUMNS

EXAMPLE_USERS = 3
EXAMPLE_ROWS = 12


def events_example(frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """A few users' raw events (whole users first, at most ``EXAMPLE_ROWS`` rows) from a
    validated frame, as a file would hold them (``ts`` as ISO-8601 text)."""
    users = pd.unique(frame["user_id"])[:EXAMPLE_USERS]
    part = frame[frame["user_id"].isin(users)].head(EXAMPLE_ROWS)
    out: dict[str, Any] = {
        "user_id": part["user_id"].astype(object).to_numpy(),
        "ts": format_ts(part["ts"].to_numpy(dtype=np.float64)),
        "step": part["step"].astype(object).to_numpy(),
        "outcome": part["outcome"].astype(object).to_numpy(),
    }
    for col in (*OPTIONAL, *spec.context_columns):
        if col in part.columns and part[col].notna().any():
            out[col] = part[col].to_numpy()
    return pd.DataFrame(out)


def events_signature(example: pd.DataFrame, output: pd.DataFrame, spec: FeatureSpec) -> Any:
    """An MLflow ``ModelSignature``: the event-log columns in, ``user_id, ts, step, p_accept``
    out."""
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    loose = {"user_id": AnyType(), "ts": AnyType()}  # numeric ids; ISO text or epoch seconds
    cols = [ColSpec(loose.get(c, "string"), c) for c in EVENT_COLUMNS]
    # optional columns as read from a file: text, numbers or all-missing floats; the model's
    # own validation (``features.events``) parses and checks them with row and column
    cols += [ColSpec(AnyType(), c, required=False) for c in (*OPTIONAL, *spec.context_columns)]
    return ModelSignature(inputs=Schema(cols), outputs=infer_signature(example, output).outputs)
