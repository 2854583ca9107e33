"""The MLflow pyfunc face of a nextstep model bundle ("models from code").

MLflow stores this file next to the model and runs it when the model is loaded with
``mlflow.pyfunc.load_model``; the ``features`` and ``models`` packages travel with the model
(``code_paths``), so the loaded model uses exactly the feature code it was trained with.

``predict`` takes an event log in the contract's columns (``user_id``, ``ts``, ``step``,
``outcome``, optional ``propensity``/``policy``/``decision_id`` and context columns such as
``channel``) and returns ``user_id, ts, step, p_accept``: the readiness the model gives each
offer from the same user's earlier rows only (``models.event_scoring``; the same numbers as
``nextstep predict``). The catalog it was trained on travels in the ``bundle`` artifact. A
frame of the model's engineered feature columns (``FeatureSpec.names``) is still accepted and
returns ``p_accept`` only. The service does not go through pyfunc: it loads the bundle directory
itself and calls the native LightGBM booster (``models.bundle.load_bundle_dir``).

Do not import this module: it registers the model with ``mlflow.models.set_model``.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from features.catalog import load_catalog
from models.bundle import load_bundle
from models.event_scoring import EVENT_COLUMNS, readiness_of_events


class NextstepReadiness(PythonModel):
    """P(accept) per offer of an event log, from the bundle's calibrated readiness model."""

    def load_context(self, context) -> None:  # type: ignore[no-untyped-def]

        folder = Path(context.artifacts["bundle"])
        self.bundle = load_bundle(folder)
        self.names = list(self.bundle.spec.names)
        path = folder / "catalog.yaml"  # absent in bundles older than event-log input
        self.catalog = load_catalog(path) if path.exists() else None

    # ``model_input: pd.DataFrame``: a hint MLflow accepts without deriving a schema from it;
    # the logged signature (the event-log columns) is the schema.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:  # type: ignore[no-untyped-def]

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if self.catalog is not None and all(c in frame.columns for c in EVENT_COLUMNS):
            return readiness_of_events(self.bundle.readiness, self.bundle.spec, self.catalog, frame)
        if all(c in frame.columns for c in self.names):
            X = frame[self.names].to_numpy(dtype=np.float64, na_value=np.nan)
            return pd.DataFrame({"p_accept": self.bundle.readiness.positive_proba(X)})
        missing = [c for c in EVENT_COLUMNS if c not in frame.columns]
        raise ValueError(
            f"expected an event log with columns {', '.join(EVENT_COLUMNS)} (and optional "
            f"context columns); missing {', '.join(missing)}"
        )


mlflow.models.set_model(NextstepReadiness())
