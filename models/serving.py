"""The serving artifact: what a server needs of a model bundle, as data that cannot run code.

A bundle (``models.bundle``) is a joblib pickle of scikit-learn estimators: unpickling it runs
whatever code the file names, and imports scikit-learn, SciPy and pandas. So
``save_bundle`` writes ``serving/`` beside it, with no pickle in it:
- each outcome model's LightGBM model text (``<name>.txt``), or for a logistic readiness model
  (``models.linear``) its coefficients in ``serving.json``;
- ``serving.json``: best iterations, isotonic knots and the bundle's numbers;
- ``spec.json`` (the feature layout) and ``meta.json`` (numbers as plain JSON numbers).

``load_serving_dir`` builds the same ``ModelScorer`` from that, through LightGBM's C library
(``models.native.NativeBooster``) and the calibration formula training uses
(``models.calibration``). Tests prove its probabilities, contributions, split thresholds and
decisions equal the bundle's to the bit.

``serving_digest`` is the artifact's sha256 (over every file's name and bytes); training records
it on the registered model version (tag ``serving_sha256``) and the service refuses an artifact
whose digest differs (``verify_serving``). The joblib bundle is loaded only when a caller asks
for it explicitly (``trust_pickle``: the CLI's ``--trust-registry``), never as a silent fallback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from features.catalog import Catalog
from features.spec import FeatureSpec
from models.bundle import (
    BUNDLE_FILE,
    FORMAT_VERSION,
    META_FILE,
    ModelBundle,
    ModelLoadError,
    ModelScorer,
    checked_scorer,
    find_bundle_file,
    load_bundle_dir,
)
from models.calibration import calibrated
from models.linear import KIND as LINEAR_KIND
from models.linear import LinearReadiness, is_linear
from models.native import NativeBooster

log = logging.getLogger("nextstep.models")
SERVING_DIR = "serving"
_INDEX = "serving.json"
_SPEC = "spec.json"
_META = "meta.json"
_FORMAT = 2  # 1 held the spec and meta as a pickle: refused, it could run code
_MODELS = ("readiness", "drop", "back", "value")  # value: fitted Q (models.fitted_q), optional
DIGEST_TAG = "serving_sha256"  # the model-version tag holding ``serving_digest``


class ArtifactDigestMismatch(ModelLoadError):
    """The serving artifact's bytes are not those recorded when the model was registered."""


def serving_digest(directory: Path) -> str:
    """sha256 over every file of a ``serving/`` directory: its relative name and its bytes, in
    name order. Any added, removed, renamed or changed file changes it."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(directory).rglob("*") if p.is_file() or p.is_symlink())
    for f in files:
        name = f.relative_to(directory).as_posix().encode()
        h.update(len(name).to_bytes(4, "big") + name)
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def serving_directory(path: str | Path) -> Path | None:
    """The ``serving/`` directory of a model directory (beside its bundle file), if any."""
    found = find_bundle_file(path)
    if found is not None and (found.parent / SERVING_DIR / _INDEX).is_file():
        return found.parent / SERVING_DIR
    root = Path(path)
    if (root / SERVING_DIR / _INDEX).is_file():
        return root / SERVING_DIR
    hits = sorted(root.rglob(f"{SERVING_DIR}/{_INDEX}")) if root.is_dir() else []
    return hits[0].parent if hits else None


def verify_serving(directory: Path, expected: str) -> None:
    """Raise ``ArtifactDigestMismatch`` unless ``directory`` hashes to ``expected``."""
    actual = serving_digest(directory)
    if actual != expected.strip().lower():
        raise ArtifactDigestMismatch(
            f"serving artifact {directory} has sha256 {actual[:16]}..., the registry recorded "
            f"{expected[:16]}...: it was changed after registration; refusing to load it"
        )


def _plain(value: Any) -> Any:
    """``value`` as plain JSON data: numpy numbers become Python numbers, tuples lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


@dataclass
class ServingModel:
    """An outcome model as the scorer uses it: ``ReadinessModel``'s serving half."""

    booster_: NativeBooster
    calibration_x_: np.ndarray | None
    calibration_y_: np.ndarray | None
    scale_: float | None = None  # the value model's: its output times the best goal's worth

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        if self.scale_ is not None:  # a value, not a probability (FittedQ.calibrate)
            return raw * self.scale_
        return calibrated(raw, self.calibration_x_, self.calibration_y_)

    def positive_proba(self, X: np.ndarray) -> np.ndarray:
        """``ReadinessModel.positive_proba``: batch scoring (``predict``, Dask) reads the
        serving artifact, not the fitted estimator."""
        return self.calibrate(self.booster_.predict(X, num_threads=1))

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Per-feature SHAP contributions (raw log-odds), last column the bias."""
        return self.booster_.predict(X, pred_contrib=True, num_threads=1)


def save_bundle(bundle: ModelBundle, path: str | Path) -> Path:
    """Write ``bundle`` to the directory ``path``: the joblib bundle (what training and the
    CLI's ``--trust-registry`` load), ``meta.json`` and the serving artifact beside them."""
    import joblib  # about 0.2 s to import: paid where a bundle is written, not at start-up

    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    joblib.dump(bundle, p / BUNDLE_FILE, compress=3)
    meta = {"format": FORMAT_VERSION, "features": bundle.spec.names, **bundle.meta}
    (p / META_FILE).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
    save_serving(bundle, p)
    return p


def save_serving(bundle: ModelBundle, path: Path) -> Path:
    """Write ``path/serving/`` for ``bundle`` (called by ``save_bundle``, after the bundle).

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
        model = getattr(bundle, name, None)
        if model is None:
            models[name] = None
            continue
        if is_linear(model):  # the logistic readiness (models.linear): numbers, no trees
            models[name] = model.to_dict()
            continue
        booster = model.booster_
        # every tree: the predictor applies ``best_iteration`` itself, as the booster did
        text = booster.model_to_string(num_iteration=-1)
        (out / f"{name}.txt").write_text(text, encoding="utf-8")
        knots = (getattr(model, "calibration_x_", None), getattr(model, "calibration_y_", None))
        models[name] = {
            "best_iteration": int(booster.best_iteration),
            # floats as JSON: Python writes the shortest text that reads back to the same bits
            "knots": None if knots[0] is None else [np.asarray(k).tolist() for k in knots],
        }
        if getattr(model, "scale_", None) is not None:
            models[name]["scale"] = float(model.scale_)
    (out / _SPEC).write_text(json.dumps(bundle.spec.to_dict()), encoding="utf-8")
    (out / _META).write_text(json.dumps(_plain(bundle.meta)), encoding="utf-8")
    index = {
        "format": _FORMAT,
        "models": models,
        "typical_gap_hours": float(bundle.typical_gap_hours),
        "base_rates": {k: float(v) for k, v in bundle.base_rates.items()},
    }
    (out / _INDEX).write_text(json.dumps(index), encoding="utf-8")


def load_serving(directory: Path, expected_sha256: str | None = None) -> ModelBundle:
    """The bundle of a ``serving/`` directory, with ``ServingModel``s (errors as raised).

    Reads only JSON and LightGBM model text: nothing in the directory can run code. With
    ``expected_sha256`` the directory is verified first (``verify_serving``)."""
    if expected_sha256 is not None:
        verify_serving(directory, expected_sha256)
    index = json.loads((directory / _INDEX).read_text(encoding="utf-8"))
    if index.get("format") != _FORMAT:
        raise ValueError(
            f"serving format {index.get('format')!r}, this code reads {_FORMAT} "
            "(format 1 held a pickle: retrain the model to serve it)"
        )
    spec = FeatureSpec.from_dict(json.loads((directory / _SPEC).read_text(encoding="utf-8")))
    meta = json.loads((directory / _META).read_text(encoding="utf-8"))
    models: dict[str, ServingModel | LinearReadiness | None] = {}
    for name in _MODELS:
        entry = index["models"].get(name)
        if entry is None:
            models[name] = None
            continue
        if entry.get("kind") == LINEAR_KIND:
            linear = LinearReadiness.from_dict(entry)
            if linear.n_features != len(spec.names):
                raise ValueError(f"{name} expects {linear.n_features} features")
            models[name] = linear
            continue
        text = (directory / f"{name}.txt").read_text(encoding="utf-8")
        booster = NativeBooster(text, entry["best_iteration"])
        if booster.num_feature() != len(spec.names):
            raise ValueError(f"{name} expects {booster.num_feature()} features")
        knots = entry["knots"]
        x, y = (None, None) if knots is None else (np.asarray(k, np.float64) for k in knots)
        models[name] = ServingModel(booster, x, y, entry.get("scale"))
    readiness = models["readiness"]
    if readiness is None:
        raise ValueError("no readiness model")
    return ModelBundle(
        readiness=readiness,
        spec=spec,
        drop=models["drop"],
        back=models["back"],
        value=models["value"],
        typical_gap_hours=float(index["typical_gap_hours"]),
        base_rates=index["base_rates"],
        meta=meta,
    )


def load_serving_dir(
    path: str | Path,
    catalog: Catalog | None = None,
    *,
    expected_sha256: str | None = None,
    trust_pickle: bool = False,
) -> tuple[ModelScorer, dict[str, Any]]:
    """``(scorer, meta)`` of a model directory from its serving artifact.

    A model without a usable artifact is refused (``ModelLoadError``), unless ``trust_pickle``
    (the CLI's explicit ``--trust-registry``) allows its joblib bundle, which runs code.
    """
    directory = serving_directory(path)
    if directory is None:
        if trust_pickle:
            log.warning("%s has no serving artifact: loading its pickled bundle (trusted)", path)
            return load_bundle_dir(path, catalog)
        raise ModelLoadError(
            f"{path} has no serving artifact (serving/serving.json): retrain the model, or "
            "load its pickled bundle with --trust-registry if you trust whoever wrote it"
        )
    try:
        bundle = load_serving(directory, expected_sha256)
        scorer = checked_scorer(bundle, catalog)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load the serving artifact {directory}: {type(exc).__name__}: {exc}"
        ) from None
    return scorer, dict(bundle.meta)
