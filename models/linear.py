"""The logistic readiness model as plain numbers, for the bundle to serve when it wins.

``nextstep train`` fits LightGBM and the logistic baseline (``models.readiness.LogisticBaseline``)
on the same rows and scores both on the holdout. When the baseline's log loss is lower (little
data, or a signal that really is linear), serving LightGBM would serve the worse of two models
the run already has, so the bundle's readiness becomes this model instead.

``LinearReadiness`` is the fitted scikit-learn pipeline flattened into arrays: medians and
missing indicators, standardisation, one coefficient per one-hot column with the prior for an
unseen value, and the intercept. Scoring is a few numpy operations (no scikit-learn at serving
time, nothing pickled in the serving artifact) and gives the pipeline's probabilities to
rounding (tests compare them). It has the face the scorer expects of an outcome model:
``raw`` (log-odds), ``calibrate``, ``positive_proba``, ``contributions`` and
``feature_importance``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

KIND = "logistic"


@dataclass(frozen=True)
class CategoricalTerm:
    """One categorical feature: its known codes (sorted), their coefficients and the prior
    (the coefficient-weighted training frequencies) a code never seen in training gets."""

    feature: int
    codes: np.ndarray
    coefs: np.ndarray
    prior: float


@dataclass(frozen=True)
class LinearReadiness:
    """Logistic readiness: ``sigmoid(intercept + numeric part + categorical part)``."""

    n_features: int
    intercept: float
    numeric: np.ndarray  # feature index of each numeric column
    medians: np.ndarray  # imputation value per numeric column
    indicators: np.ndarray  # positions (in ``numeric``) that have a missing-value indicator
    mean: np.ndarray  # standardisation of [numeric columns, indicators]
    scale: np.ndarray
    coefs: np.ndarray  # coefficient per standardised column
    categorical: tuple[CategoricalTerm, ...]
    kind: str = KIND

    @classmethod
    def from_baseline(cls, baseline: Any) -> LinearReadiness:
        """Flatten a fitted ``LogisticBaseline`` (its ``pipeline_``)."""
        transformer, logistic = baseline.pipeline_[0], baseline.pipeline_[-1]
        coef = np.asarray(logistic.coef_[0], dtype=np.float64)
        parts = {name: (pipe, cols) for name, pipe, cols in transformer.transformers_}
        numeric_pipe, numeric_cols = parts["numeric"]
        imputer, scaler = numeric_pipe[0], numeric_pipe[-1]
        indicators = (
            np.asarray(imputer.indicator_.features_, dtype=np.int64)
            if imputer.indicator_ is not None
            else np.empty(0, dtype=np.int64)
        )
        n_num = len(numeric_cols) + len(indicators)
        terms: list[CategoricalTerm] = []
        offset = n_num
        if "categorical" in parts:
            cat_pipe, cat_cols = parts["categorical"]
            onehot = cat_pipe[-1]
            for j, (feature, codes) in enumerate(
                zip(cat_cols, onehot.encoder_.categories_, strict=True)
            ):
                a, b = int(onehot.bounds_[j]), int(onehot.bounds_[j + 1])
                w = coef[offset + a : offset + b]
                terms.append(
                    CategoricalTerm(
                        feature=int(feature),
                        codes=np.asarray(codes, dtype=np.float64),
                        coefs=w.copy(),
                        prior=float(onehot.means_[a:b] @ w),
                    )
                )
        return cls(
            n_features=int(baseline.n_features_in_),
            intercept=float(logistic.intercept_[0]),
            numeric=np.asarray(numeric_cols, dtype=np.int64),
            medians=np.nan_to_num(np.asarray(imputer.statistics_, dtype=np.float64)),
            indicators=indicators,
            mean=np.asarray(scaler.mean_, dtype=np.float64),
            scale=np.asarray(scaler.scale_, dtype=np.float64),
            coefs=coef[:n_num].copy(),
            categorical=tuple(terms),
        )

    # -- scoring ------------------------------------------------------------------------------
    def _numeric_terms(self, X: np.ndarray) -> np.ndarray:
        """Per row and standardised column, ``coef * z`` (z has mean 0 on the training rows)."""
        values = X[:, self.numeric]
        missing = np.isnan(values)
        filled = np.where(missing, self.medians, values)
        Z = np.concatenate([filled, missing[:, self.indicators].astype(np.float64)], axis=1)
        return (Z - self.mean) / self.scale * self.coefs

    def _categorical_effect(self, term: CategoricalTerm, X: np.ndarray) -> np.ndarray:
        v = X[:, term.feature]
        v = np.where(np.isnan(v), -1.0, v)  # the baseline imputes a missing code as -1
        pos = np.searchsorted(term.codes, v)
        known = pos < len(term.codes)
        known[known] = term.codes[pos[known]] == v[known]
        return np.where(known, term.coefs[np.minimum(pos, len(term.codes) - 1)], term.prior)

    def raw(self, X: np.ndarray) -> np.ndarray:
        """Log-odds of acceptance per row."""
        X = np.asarray(X, dtype=np.float64)
        out = self.intercept + self._numeric_terms(X).sum(axis=1)
        for term in self.categorical:
            out = out + self._categorical_effect(term, X)
        return out

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """Logistic regression is its own calibration: the sigmoid of the log-odds."""
        return 1.0 / (1.0 + np.exp(-np.asarray(raw, dtype=np.float64)))

    def positive_proba(self, X: np.ndarray) -> np.ndarray:
        return self.calibrate(self.raw(X))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``(1 - p, p)`` per row, as the fitted estimators answer."""
        p = self.positive_proba(X)
        return np.column_stack([1.0 - p, p])

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Per feature, its log-odds effect relative to the training average (exact for a
        linear model); the last column is the bias, so each row sums to ``raw``."""
        X = np.asarray(X, dtype=np.float64)
        out = np.zeros((len(X), self.n_features + 1))
        terms = self._numeric_terms(X)
        n = len(self.numeric)
        out[:, self.numeric] += terms[:, :n]
        out[:, self.numeric[self.indicators]] += terms[:, n:]
        bias = self.intercept
        for term in self.categorical:
            out[:, term.feature] += self._categorical_effect(term, X) - term.prior
            bias += term.prior
        out[:, -1] = bias
        return out

    def feature_importance(self) -> np.ndarray:
        """Absolute coefficients summed per feature (standardised scale, one-hot columns
        weighted by their spread): the linear analogue of LightGBM's gain."""
        imp = np.zeros(self.n_features)
        n = len(self.numeric)
        np.add.at(imp, self.numeric, np.abs(self.coefs[:n]))
        np.add.at(imp, self.numeric[self.indicators], np.abs(self.coefs[n:]))
        for term in self.categorical:
            imp[term.feature] += float(np.abs(term.coefs - term.coefs.mean()).sum())
        return imp

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"kind": self.kind}

    # -- the serving artifact -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON numbers (Python writes floats that read back to the same bits)."""
        return {
            "kind": self.kind,
            "n_features": self.n_features,
            "intercept": self.intercept,
            "numeric": self.numeric.tolist(),
            "medians": self.medians.tolist(),
            "indicators": self.indicators.tolist(),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coefs": self.coefs.tolist(),
            "categorical": [
                {
                    "feature": t.feature,
                    "codes": t.codes.tolist(),
                    "coefs": t.coefs.tolist(),
                    "prior": t.prior,
                }
                for t in self.categorical
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LinearReadiness:
        if d.get("kind") != KIND:
            raise ValueError(f"not a {KIND} model: kind {d.get('kind')!r}")
        f64 = np.float64
        return cls(
            n_features=int(d["n_features"]),
            intercept=float(d["intercept"]),
            numeric=np.asarray(d["numeric"], dtype=np.int64),
            medians=np.asarray(d["medians"], dtype=f64),
            indicators=np.asarray(d["indicators"], dtype=np.int64),
            mean=np.asarray(d["mean"], dtype=f64),
            scale=np.asarray(d["scale"], dtype=f64),
            coefs=np.asarray(d["coefs"], dtype=f64),
            categorical=tuple(
                CategoricalTerm(
                    feature=int(t["feature"]),
                    codes=np.asarray(t["codes"], dtype=f64),
                    coefs=np.asarray(t["coefs"], dtype=f64),
                    prior=float(t["prior"]),
                )
                for t in d["categorical"]
            ),
        )


def is_linear(model: Any) -> bool:
    """True for a readiness model scored by formula rather than by trees."""
    return getattr(model, "kind", None) == KIND
