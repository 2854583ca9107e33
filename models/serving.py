"""The serving artifact: what a server needs of a model bundle, loadable without scikit-learn.

A bundle (``models.bundle``) is a joblib pickle of scikit-learn estimators. Unpickling it
imports scikit-learn, SciPy, pandas and LightGBM's Python package, about 2.9 s of the 5 s
from ``nextstep serve`` to ready on the bench machine. So ``ModelBundle.save`` also writes
``serving/`` beside it:
- each outcome model's LightGBM model text, best iteration and isotonic knots;
- the feature spec and meta (pickled, as the bundle holds them), and the bundle's numbers.

``load_serving_dir`` builds the same ``ModelScorer`` from that, through LightGBM's C library
(``models.native.NativeBooster``) and the calibration formula training uses
(``models.calibration``). Tests prove its probabilities, contributions, split thresholds and
decisions equal the bundle's to the bit. A model directory without ``serving/`` (trained
before it existed) or with an unusable one loads the bundle, as before.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from features.catalog import Catalog
from models.bundle import (
    ModelBundle,
    ModelScorer,
    checked_scorer,
    find_bundle_file,
    load_bundle_dir,
)
from models.calibration import calibrated
from models.native import NativeBooster

log = logging.getLogger("nextstep.models")
SERVING_DIR = "serving"
_INDEX = "serving.json"
_OBJECTS = "objects.pkl"
_FORMAT = 1
_MODELS = ("readiness", "drop", "back")


@dataclass
class ServingModel:
    """An outcome model as the scorer uses it: ``ReadinessModel``'s serving half."""

    booster_: NativeBooster
    calibration_x_: np.ndarray | None
    calibration_y_: np.ndarray | None

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        return calibrated(raw, self.calibration_x_, self.calibration_y_)

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Per-feature SHAP contributions (raw log-odds), last column the bias."""
        return self.booster_.predict(X, pred_contrib=True, num_threads=1)


def save_serving(bundle: ModelBundle, path: Path) -> Path:
    """Write ``path/serving/`` for ``bundle`` (called by ``ModelBundle.save``, after the bundle).

    It is written beside and then renamed into place, after the old one is removed: a save
    that fails half-way leaves no artifact (the bundle is then served), never a mix of this
    model's files with an older index.
    """
    out, tmp = path / SERVING_DIR, path / f"{SERVING_DIR}.tmp"
    for stale in (out, tmp):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_serving(bundle, tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_serving(bundle: ModelBundle, out: Path) -> None:
    models: dict[str, Any] = {}
    for name in _MODELS:
        model = getattr(bundle, name)
        if model is None:
            models[name] = None
            continue
        booster = model.booster_
        # every tree: the predictor applies ``best_iteration`` itself, as the booster did
        text = booster.model_to_string(num_iteration=-1)
        (out / f"{name}.txt").write_text(text, encoding="utf-8")
        knots = (model.calibration_x_, model.calibration_y_)
        models[name] = {
            "best_iteration": int(booster.best_iteration),
            # floats as JSON: Python writes the shortest text that reads back to the same bits
            "knots": None if knots[0] is None else [np.asarray(k).tolist() for k in knots],
        }
    # the spec and meta as the bundle holds them (meta may carry numpy numbers, tuples)
    objects = {"spec": bundle.spec, "meta": bundle.meta}
    (out / _OBJECTS).write_bytes(pickle.dumps(objects, protocol=pickle.HIGHEST_PROTOCOL))
    index = {
        "format": _FORMAT,
        "models": models,
        "typical_gap_hours": float(bundle.typical_gap_hours),
        "base_rates": {k: float(v) for k, v in bundle.base_rates.items()},
    }
    (out / _INDEX).write_text(json.dumps(index), encoding="utf-8")


def load_serving(directory: Path) -> ModelBundle:
    """The bundle of a ``serving/`` directory, with ``ServingModel``s (errors as raised)."""
    index = json.loads((directory / _INDEX).read_text(encoding="utf-8"))
    if index.get("format") != _FORMAT:
        raise ValueError(f"serving format {index.get('format')!r}, this code reads {_FORMAT}")
    objects = pickle.loads((directory / _OBJECTS).read_bytes())
    spec = objects["spec"]
    models: dict[str, ServingModel | None] = {}
    for name in _MODELS:
        entry = index["models"].get(name)
        if entry is None:
            models[name] = None
            continue
        text = (directory / f"{name}.txt").read_text(encoding="utf-8")
        booster = NativeBooster(text, entry["best_iteration"])
        if booster.num_feature() != len(spec.names):
            raise ValueError(f"{name} expects {booster.num_feature()} features")
        knots = entry["knots"]
        x, y = (None, None) if knots is None else (np.asarray(k, np.float64) for k in knots)
        models[name] = ServingModel(booster, x, y)
    readiness = models["readiness"]
    if readiness is None:
        raise ValueError("no readiness model")
    return ModelBundle(
        readiness=readiness,
        spec=spec,
        drop=models["drop"],
        back=models["back"],
        typical_gap_hours=float(index["typical_gap_hours"]),
        base_rates=index["base_rates"],
        meta=objects["meta"],
    )


def load_serving_dir(
    path: str | Path, catalog: Catalog | None = None
) -> tuple[ModelScorer, dict[str, Any]]:
    """``models.bundle.load_bundle_dir`` from the serving artifact when the model has one.

    The artifact sits beside the bundle file ``load_bundle_dir`` would load. Without it, or
    when it cannot be read or cannot score ``catalog``, the bundle is loaded instead (and
    reports its own errors).
    """
    found = find_bundle_file(path)
    directory = None if found is None else found.parent / SERVING_DIR
    if directory is None or not (directory / _INDEX).is_file():
        return load_bundle_dir(path, catalog)
    try:
        bundle = load_serving(directory)
        scorer = checked_scorer(bundle, catalog)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("cannot serve from %s (%s); loading the bundle", directory, reason)
        return load_bundle_dir(path, catalog)
    return scorer, dict(bundle.meta)
