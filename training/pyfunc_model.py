"""The MLflow pyfunc face of a nextstep model bundle ("models from code").

MLflow stores this file next to the model and runs it when the model is loaded with
``mlflow.pyfunc.load_model``; the ``features`` and ``models`` packages travel with the model
(``code_paths``), so the loaded model uses exactly the feature code it was trained with.
It is a thin wrapper: ``load_context`` loads the bundle from the ``bundle`` artifact and
``predict`` takes a DataFrame of feature columns (``FeatureSpec.names``) and returns
``p_accept``. The service does not go through pyfunc: it loads the bundle directory itself and
calls the native LightGBM booster (``models.bundle.load_bundle_dir``).

Do not import this module: it registers the model with ``mlflow.models.set_model``.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class NextstepReadiness(PythonModel):
    """P(accept) for feature rows, from the bundle's calibrated readiness model."""

    def load_context(self, context) -> None:  # type: ignore[no-untyped-def]
        from models.bundle import load_bundle

        self.bundle = load_bundle(context.artifacts["bundle"])
        self.names = list(self.bundle.spec.names)

    # ``model_input: pd.DataFrame``: a hint MLflow accepts without deriving a schema from it;
    # the logged signature (inferred from holdout feature rows) is the schema.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:  # type: ignore[no-untyped-def]
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        missing = [c for c in self.names if c not in frame.columns]
        if missing:
            raise ValueError(f"missing feature columns: {', '.join(missing[:8])}")
        X = frame[self.names].to_numpy(dtype=np.float64, na_value=np.nan)
        return pd.DataFrame({"p_accept": self.bundle.readiness.positive_proba(X)})


mlflow.models.set_model(NextstepReadiness())
