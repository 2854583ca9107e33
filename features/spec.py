"""Which features a model uses and how context values are encoded.

A ``FeatureSpec`` is learned from the training log (which context columns exist, the categories
of the string ones) and travels with the model, so the service encodes a request's context exactly
as training did. Unknown categories become NaN, which LightGBM treats as missing: a new channel
is a prior, never an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from features.catalog import Catalog
from features.state import CANDIDATE_FEATURES, STATE_FEATURES, UserState

MAX_CATEGORIES = 64


@dataclass(frozen=True)
class FeatureSpec:
    """Feature layout: state features, candidate features, then one column per context field."""

    context_columns: tuple[str, ...] = ()
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [*STATE_FEATURES, *CANDIDATE_FEATURES, *(f"ctx_{c}" for c in self.context_columns)]

    @property
    def categorical_indices(self) -> list[int]:
        base = len(STATE_FEATURES) + len(CANDIDATE_FEATURES)
        return [base + i for i, c in enumerate(self.context_columns) if c in self.categories]

    def encode_context(self, context: Mapping[str, Any]) -> list[float]:
        """Context values in feature order: category codes or numbers, NaN when unknown."""
        out: list[float] = []
        for col in self.context_columns:
            v = context.get(col)
            cats = self.categories.get(col)
            if cats is not None:
                try:
                    out.append(float(cats.index(str(v))) if v is not None else math.nan)
                except ValueError:
                    out.append(math.nan)
            else:
                out.append(_to_float(v))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "context_columns": list(self.context_columns),
            "categories": {k: list(v) for k, v in self.categories.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        return cls(
            context_columns=tuple(data.get("context_columns", ())),
            categories={k: tuple(v) for k, v in data.get("categories", {}).items()},
        )

    @classmethod
    def from_frame(cls, frame: Any, context_columns: Sequence[str]) -> FeatureSpec:
        """Learn the context layout from a validated event frame (pandas)."""
        import pandas as pd

        cols: list[str] = []
        cats: dict[str, tuple[str, ...]] = {}
        for c in context_columns:
            s = frame[c]
            if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
                cols.append(c)
                continue
            values = sorted({str(v) for v in s.dropna().unique()})
            if 0 < len(values) <= MAX_CATEGORIES:
                cols.append(c)
                cats[c] = tuple(values)
        return cls(context_columns=tuple(cols), categories=cats)


def candidate_matrix(
    spec: FeatureSpec,
    catalog: Catalog,
    state: UserState,
    candidates: Sequence[int],
    now: float,
    context: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Feature rows (n_candidates, n_features) for offering each candidate now.

    ``context`` is the request's context; fields it lacks fall back to the latest known value in
    the user's history, exactly as the offline builder forward-fills within a user.
    """
    merged = dict(state.context)
    if context:
        merged.update({k: v for k, v in context.items() if v is not None})
    head = state.state_vector(now)
    tail = spec.encode_context(merged)
    rows = [head + state.candidate_vector(catalog, s) + tail for s in candidates]
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(spec.names))


def _to_float(v: Any) -> float:
    if v is None or isinstance(v, bool):
        return math.nan if v is None else float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan
