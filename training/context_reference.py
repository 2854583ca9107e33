"""The training data's context distribution, stored in the bundle meta for the drift watch.

``features.drift`` explains the format and how the service scores requests against it. The
reference is built from the encoded feature matrix of the training rows, so the plain pipeline
and the Dask one (which never holds the raw frame) store the same thing: a category code maps
back to its value through the spec, the pooled "other" code and unseen values share the "other"
bin, NaN is "missing". At most ``MAX_ROWS`` evenly spaced rows are read: deciles and shares of a
few hundred thousand rows are as good as of all of them for a drift score.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from features.drift import QUANTILES, TOP_VALUES
from features.spec import FeatureSpec
from features.state import CANDIDATE_FEATURES, STATE_FEATURES

MAX_ROWS = 200_000


def context_reference(X: np.ndarray, spec: FeatureSpec) -> dict[str, Any]:
    """``{"rows": n, "columns": {name: {...}}}`` for the context columns of ``spec``
    (empty when the model uses no context or there are no rows)."""
    if not spec.context_columns or len(X) == 0:
        return {}
    X = X[:: max(1, math.ceil(len(X) / MAX_ROWS))]
    base = len(STATE_FEATURES) + len(CANDIDATE_FEATURES)
    m = len(X)
    columns: dict[str, Any] = {}
    for j, col in enumerate(spec.context_columns):
        x = np.asarray(X[:, base + j], dtype=np.float64)
        finite = np.isfinite(x)
        missing = float((~finite).sum()) / m
        cats = spec.categories.get(col)
        if cats is not None:
            codes = x[finite].astype(np.int64)
            named = codes[(codes >= 0) & (codes < len(cats))]
            counts = np.bincount(named, minlength=len(cats))
            top = [int(k) for k in np.argsort(-counts, kind="stable")[:TOP_VALUES] if counts[k]]
            other = int(finite.sum()) - int(sum(counts[k] for k in top))
            shares = [counts[k] / m for k in top] + [other / m, missing]
            columns[col] = {"kind": "category", "values": [cats[k] for k in top]}
        else:
            v = x[finite]
            edges = sorted(set(np.quantile(v, QUANTILES).tolist())) if len(v) else []
            counts = np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1)
            shares = [c / m for c in counts.tolist()] + [missing]
            columns[col] = {"kind": "numeric", "edges": edges}
        columns[col]["shares"] = [round(float(s), 6) for s in shares]
    return {"rows": m, "columns": columns}
