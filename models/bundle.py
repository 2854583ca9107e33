"""A trained model bundle: readiness, drop and come-back models plus the feature layout.

The bundle is what MLflow stores (as an artifact directory of a pyfunc model) and what the
service loads once at start-up. ``ModelScorer`` is its hot-path face: it builds candidate feature
rows with the online fold and calls the native LightGBM boosters directly (no pyfunc, no pandas).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from features.catalog import Catalog
from features.errors import NextstepError
from features.spec import (
    FeatureSpec,
    candidate_block,
    candidate_matrix,
    candidate_rows,
    root_block,
)
from features.state import UserState
from models.linear import is_linear
from models.native import NativePredictor

BUNDLE_FILE = "bundle.joblib"
META_FILE = "meta.json"
FORMAT_VERSION = 1


class ModelLoadError(NextstepError):
    """A model bundle is missing, corrupt or incompatible with this code or catalog."""


class OutcomeModel(Protocol):
    """What the scorer needs of an outcome model: the fitted ``models.readiness.ReadinessModel``,
    its serving half (``models.serving.ServingModel``) and ``models.linear.LinearReadiness`` all
    provide it (the tree models also a ``booster_``, the linear one ``raw``: see ``_predictor``)."""

    def calibrate(self, raw: np.ndarray) -> np.ndarray: ...

    def positive_proba(self, X: np.ndarray) -> np.ndarray: ...


@dataclass
class ModelBundle:
    """Everything the planner needs from training. ``meta`` is JSON-able (metrics, data hash).

    The models are the fitted ``ReadinessModel``s, or their serving halves
    (``models.serving.ServingModel``) in a bundle a server loaded from its serving artifact.
    Readiness is a ``models.linear.LinearReadiness`` when training found the logistic baseline
    better than LightGBM on the holdout. ``models.serving.save_bundle`` writes a bundle with its
    serving artifact.
    """

    readiness: OutcomeModel
    spec: FeatureSpec
    drop: OutcomeModel | None = None
    back: OutcomeModel | None = None
    typical_gap_hours: float = 24.0
    base_rates: Mapping[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    # the value of an offer by fitted Q iteration (models.fitted_q), or None (bundles trained
    # before it, or by the Dask engine): the planner then values leaves by its walks alone
    value: Any = None


def find_bundle_file(path: str | Path) -> Path | None:
    """The bundle file of a bundle directory (or the first in any directory containing one)."""
    root = Path(path)
    if (root / BUNDLE_FILE).exists():
        return root / BUNDLE_FILE
    return next(iter(sorted(root.rglob(BUNDLE_FILE))), None) if root.is_dir() else None


def load_bundle(path: str | Path) -> ModelBundle:
    """Load and sanity-check a bundle directory (or any directory containing one)."""
    import joblib

    root = Path(path)
    found = find_bundle_file(root)
    if found is None:
        raise ModelLoadError(f"no {BUNDLE_FILE} under {root}")
    try:
        bundle = joblib.load(found)
    except Exception as exc:  # corrupt pickle, truncated file, incompatible classes
        raise ModelLoadError(
            f"cannot load model bundle {found}: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(bundle, ModelBundle) or not (
        hasattr(bundle.readiness, "booster_") or is_linear(bundle.readiness)
    ):
        raise ModelLoadError(f"{found} is not a nextstep model bundle")
    n_expected = len(bundle.spec.names)
    n_model = _n_features(bundle.readiness)
    if n_model != n_expected:
        raise ModelLoadError(f"model expects {n_model} features, this code builds {n_expected}")
    return bundle


def _n_features(model: Any) -> int:
    return int(model.n_features) if is_linear(model) else int(model.booster_.num_feature())


def _predictor(model: Any) -> Any:
    """The raw-score function of one outcome model: the native booster, or a linear formula."""
    return model.raw if is_linear(model) else NativePredictor(model.booster_)


def load_bundle_dir(path: str | Path, catalog: Catalog | None = None) -> tuple[ModelScorer, dict]:
    """For the service: ``(scorer, meta)`` from a downloaded model directory."""
    bundle = load_bundle(path)
    return checked_scorer(bundle, catalog), dict(bundle.meta)


def checked_scorer(bundle: Any, catalog: Catalog | None) -> ModelScorer:
    """The scorer of a loaded bundle, after a smoke prediction proves it runs on ``catalog``."""
    scorer = ModelScorer(bundle, catalog)
    if catalog is not None:
        try:
            scorer.p_accept(UserState(), list(range(catalog.n)), 0.0, {})
        except Exception as exc:
            raise ModelLoadError(f"model cannot score this catalog: {exc}") from None
    return scorer


class ModelScorer:
    """Hot-path scoring: feature rows from a ``UserState`` -> calibrated probabilities.

    The boosters are called through ``NativePredictor`` (the C predictor without the Python
    wrapper's per-call overhead); the numbers are those of ``ReadinessModel.positive_proba``.
    """

    def __init__(self, bundle: ModelBundle, catalog: Catalog | None = None) -> None:
        self.bundle = bundle
        self.spec = bundle.spec
        self.catalog = catalog
        self._split_lists: list[list[float] | None] | None = None
        self._split_arrays: list[np.ndarray | None] | None = None
        self._native = {
            name: _predictor(model)
            for name, model in (
                ("accept", bundle.readiness),
                ("drop", bundle.drop),
                ("back", bundle.back),
                ("value", value_model(bundle)),
            )
            if model is not None
        }

    @property
    def split_lists(self) -> list[list[float] | None]:
        """Per feature: the sorted numeric split thresholds of all three outcome models (None
        for categorical features). Two values with the same ``bisect`` position fall on the
        same side of every split, so every tree routes them alike: the planner's cache key is
        built on these positions. Python lists, since ``bisect`` on one value at a time is
        cheaper than a numpy call on a scalar."""
        if self._split_lists is None:
            points = _split_points(self.bundle, len(self.spec.names), self.spec.categorical_indices)
            self._split_lists = [None if t is None else t.tolist() for t in points]
        return self._split_lists

    @property
    def split_arrays(self) -> list[np.ndarray | None]:
        """``split_lists`` as numpy arrays, for binning many values at once."""
        if self._split_arrays is None:
            self._split_arrays = [
                None if t is None else np.asarray(t, dtype=np.float64) for t in self.split_lists
            ]
        return self._split_arrays

    def matrix(
        self,
        state: UserState,
        candidates: Sequence[int],
        now: float,
        context: Mapping[str, Any],
        catalog: Catalog | None = None,
    ) -> np.ndarray:
        cat = catalog or self.catalog
        assert cat is not None, "ModelScorer needs a catalog"
        return candidate_matrix(self.spec, cat, state, candidates, now, context)

    def block(
        self,
        nodes: Sequence[tuple[UserState, float]],
        cands: Sequence[Sequence[int]],
        context: Mapping[str, Any],
        catalog: Catalog | None = None,
    ) -> np.ndarray:
        """Feature rows for many look-ahead nodes in one go (see ``candidate_block``)."""
        cat = catalog or self.catalog
        assert cat is not None, "ModelScorer needs a catalog"
        return candidate_block(self.spec, cat, nodes, cands, context)

    def p_accept(
        self,
        state: UserState,
        candidates: Sequence[int],
        now: float,
        context: Mapping[str, Any],
    ) -> np.ndarray:
        return self.p_accept_rows(self.matrix(state, candidates, now, context))

    def p_accept_many(
        self,
        roots: Sequence[tuple[UserState, Sequence[int], float, Mapping[str, Any]]],
        catalog: Catalog | None = None,
    ) -> list[np.ndarray]:
        """``p_accept`` of many ``(state, candidates, now, context)`` roots with one model call
        (each row is scored on its own, so each root gets exactly its ``p_accept``)."""
        cat = catalog or self.catalog
        assert cat is not None, "ModelScorer needs a catalog"
        block = root_block(self.spec, cat, roots)
        X = candidate_rows(
            self.spec,
            cat,
            block.states,
            block.now,
            block.contexts,
            block.node,
            block.step,
        )
        p = self.p_accept_rows(X)
        return np.split(p, np.cumsum(block.counts)[:-1]) if roots else []

    def p_accept_rows(self, X: np.ndarray) -> np.ndarray:
        return self.bundle.readiness.calibrate(self._native["accept"](X))

    def p_drop_rows(self, X: np.ndarray) -> np.ndarray:
        if self.bundle.drop is None:
            return np.full(len(X), self.bundle.base_rates.get("drop", 0.3))
        return self.bundle.drop.calibrate(self._native["drop"](X))

    @property
    def has_value(self) -> bool:
        """Whether the bundle holds a learned value of offers (``q_rows``)."""
        return "value" in self._native

    def q_rows(self, X: np.ndarray) -> np.ndarray:
        """The fitted-Q value of each row's offer, in the goals' units (``models.fitted_q``)."""
        return value_model(self.bundle).calibrate(self._native["value"](X))

    def p_back_rows(self, X: np.ndarray) -> np.ndarray:
        if self.bundle.back is None:
            return np.full(len(X), self.bundle.base_rates.get("back", 0.8))
        return self.bundle.back.calibrate(self._native["back"](X))


def value_model(bundle: Any) -> Any:
    """The bundle's fitted-Q value model, None when it has none (also for bundles pickled
    before the field existed)."""
    return getattr(bundle, "value", None)


def _split_points(
    bundle: ModelBundle, n_features: int, categorical: Sequence[int]
) -> list[np.ndarray | None]:
    """Sorted numeric split thresholds per feature, over all three outcome models.

    A linear readiness model (``models.linear``) answers differently for every value, so no
    threshold bins it: every numeric feature is then ``None``, and keys hold exact values."""
    if any(is_linear(m) for m in (bundle.readiness, bundle.drop, bundle.back)):
        return [None] * n_features
    thresholds: list[set[float]] = [set() for _ in range(n_features)]

    def walk(node: Mapping[str, Any]) -> None:
        if "split_feature" in node:
            if node.get("decision_type") == "<=":
                thresholds[int(node["split_feature"])].add(float(node["threshold"]))
            walk(node["left_child"])
            walk(node["right_child"])

    for model in (bundle.readiness, bundle.drop, bundle.back, value_model(bundle)):
        if model is None:
            continue
        for tree in model.booster_.dump_model()["tree_info"]:
            walk(tree["tree_structure"])
    cats = set(categorical)
    return [
        None if j in cats else np.asarray(sorted(thresholds[j]), dtype=np.float64)
        for j in range(n_features)
    ]
