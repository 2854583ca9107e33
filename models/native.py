"""LightGBM's C library called directly: the predictor of the planner's many small batches,
and boosters a server loads without importing the ``lightgbm`` package.

``Booster.predict`` spends tens of microseconds per call in Python before a single tree runs
(a predictor object, a deep copy of the parameters, a parameter string, a size query); the
planner makes about a dozen calls of a few rows per decision, so that overhead was most of a
decision's model time. ``NativePredictor`` does the same ``LGBM_BoosterPredictForMat`` call with
everything fixed once, and returns exactly the numbers ``booster.predict(X, num_threads=1)``
returns (``tests/models/test_planner_cache.py``). If the library cannot be found, it falls back
to ``booster.predict``.

Large blocks (``recommend`` and batch look-aheads score thousands of rows per call) run on every
core: each row is predicted on its own, so the numbers do not depend on the thread count; a
small block stays on one thread, where starting OpenMP's team would cost more than it saves.

The library is loaded from the file the ``lightgbm`` package ships, without importing the
package: ``import lightgbm`` imports scikit-learn (and with it SciPy), pandas and pyarrow for
its optional integrations, which was most of a server's start-up. ``NativeBooster`` is a booster
read from its model text through the same library (``models.serving``). The dynamic loader
hands ``lightgbm.basic`` the same library, so handles of either kind work with both.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

_FLOAT64 = 1  # C_API_DTYPE_FLOAT64
_PREDICT_NORMAL = 0  # C_API_PREDICT_NORMAL: probabilities for a binary objective
_PREDICT_CONTRIB = 3  # C_API_PREDICT_CONTRIB: SHAP values, the bias last
_ROW_MAJOR = 1
# From this many rows a call is split over the cores (below it one thread is faster).
PARALLEL_ROWS = 2048
_LIB_NAME = {"win32": "lib_lightgbm.dll", "darwin": "lib_lightgbm.dylib"}.get(
    sys.platform, "lib_lightgbm.so"
)
_lib: Any = None


class LightGBMError(RuntimeError):
    """An error LightGBM's C library reported."""


def library() -> Any:
    """LightGBM's C library (loaded once), found where ``lightgbm.libpath`` looks for it."""
    global _lib
    if _lib is None:
        spec = importlib.util.find_spec("lightgbm")  # finds the package, does not run it
        places = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
        candidates = [f for p in places for f in (p.parent, p / "bin", p / "lib")]
        found = [f / _LIB_NAME for f in candidates if (f / _LIB_NAME).is_file()]
        if not found:
            raise LightGBMError(f"{_LIB_NAME} not found beside the lightgbm package")
        lib = ctypes.cdll.LoadLibrary(str(found[0]))
        lib.LGBM_GetLastError.restype = ctypes.c_char_p
        _lib = lib
    return _lib


def _call(ret: int) -> None:
    if ret != 0:
        raise LightGBMError(library().LGBM_GetLastError().decode("utf-8", "replace"))


def _c_str(text: str) -> ctypes.c_char_p:
    return ctypes.c_char_p(text.encode("utf-8"))


class NativePredictor:
    """``booster.predict(X, num_threads=1)`` for a binary booster, without the Python layer."""

    def __init__(self, booster: Any) -> None:
        self.booster = booster  # keeps the native handle alive
        self.n_features = int(booster.num_feature())
        self._num_iteration = int(booster.best_iteration)  # what Booster.predict uses
        try:
            library()
            self._native = int(booster.num_model_per_iteration()) == 1
        except (LightGBMError, OSError):  # pragma: no cover - depends on the installed LightGBM
            self._native = False
        if self._native:
            self._params = _c_str("num_threads=1")
            self._params_parallel = _c_str(f"num_threads={max(1, os.cpu_count() or 1)}")

    def __call__(self, X: np.ndarray) -> np.ndarray:
        if not self._native:
            return self.booster.predict(X, num_threads=1)
        X = np.ascontiguousarray(X, dtype=np.float64)
        n = X.shape[0]
        if X.shape[1] != self.n_features:
            raise ValueError(f"expected {self.n_features} features, got {X.shape[1]}")
        params = self._params_parallel if n >= PARALLEL_ROWS else self._params
        return _predict(self.booster._handle, X, _PREDICT_NORMAL, self._num_iteration, params, n)


def _predict(
    handle: Any, X: np.ndarray, kind: int, num_iteration: int, params: Any, out_len: int
) -> np.ndarray:
    """``LGBM_BoosterPredictForMat`` of a C-contiguous float64 ``X`` into ``out_len`` values."""
    n = X.shape[0]
    out = np.empty(out_len, dtype=np.float64)
    if n == 0:
        return out
    written = ctypes.c_int64(0)
    _call(
        library().LGBM_BoosterPredictForMat(
            handle,
            X.ctypes.data_as(ctypes.c_void_p),
            ctypes.c_int(_FLOAT64),
            ctypes.c_int32(n),
            ctypes.c_int32(X.shape[1]),
            ctypes.c_int(_ROW_MAJOR),
            ctypes.c_int(kind),
            ctypes.c_int(0),
            ctypes.c_int(num_iteration),
            params,
            ctypes.byref(written),
            out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
        )
    )
    if written.value != out_len:
        raise ValueError(f"LightGBM wrote {written.value} predictions, expected {out_len}")
    return out


class NativeBooster:
    """A binary booster read from its model text (``Booster.model_to_string``) through the C
    library: the parts of ``lightgbm.Booster`` that serving uses, and the same numbers."""

    def __init__(self, model_text: str, best_iteration: int = 0) -> None:
        self._handle = ctypes.c_void_p()
        iterations = ctypes.c_int(0)
        _call(
            library().LGBM_BoosterLoadModelFromString(
                _c_str(model_text), ctypes.byref(iterations), ctypes.byref(self._handle)
            )
        )
        self.best_iteration = int(best_iteration)
        self._model_text = model_text  # a handle cannot travel: pickling rebuilds from the text
        out = ctypes.c_int(0)
        _call(library().LGBM_BoosterGetNumFeature(self._handle, ctypes.byref(out)))
        self._num_feature = out.value
        _call(library().LGBM_BoosterNumModelPerIteration(self._handle, ctypes.byref(out)))
        self._per_iteration = out.value
        self._one_thread = _c_str("num_threads=1")

    def __reduce__(self) -> tuple:
        """Pickled as its model text (Dask ships scoring bundles to its workers this way)."""
        return (NativeBooster, (self._model_text, self.best_iteration))

    def __dask_tokenize__(self) -> tuple:
        return ("NativeBooster", self._model_text, self.best_iteration)

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle and _lib is not None:
            _lib.LGBM_BoosterFree(handle)

    def num_feature(self) -> int:
        return self._num_feature

    def num_model_per_iteration(self) -> int:
        return self._per_iteration

    def predict(
        self, X: np.ndarray, *, num_threads: int = 1, pred_contrib: bool = False
    ) -> np.ndarray:
        """``Booster.predict(X, num_threads=1[, pred_contrib=True])`` of a binary booster."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        n = X.shape[0]
        if X.shape[1] != self._num_feature:
            raise ValueError(f"expected {self._num_feature} features, got {X.shape[1]}")
        params, iters = self._one_thread, self.best_iteration
        if not pred_contrib:
            return _predict(self._handle, X, _PREDICT_NORMAL, iters, params, n)
        width = self._num_feature + 1
        return _predict(self._handle, X, _PREDICT_CONTRIB, iters, params, n * width).reshape(
            n, width
        )

    def dump_model(self) -> dict[str, Any]:
        """``Booster.dump_model()``: the trees as JSON (split importance, best iteration)."""
        size = 1 << 20
        while True:
            buf = ctypes.create_string_buffer(size)
            need = ctypes.c_int64(0)
            _call(
                library().LGBM_BoosterDumpModel(
                    self._handle,
                    ctypes.c_int(0),
                    ctypes.c_int(self.best_iteration),
                    ctypes.c_int(0),
                    ctypes.c_int64(size),
                    ctypes.byref(need),
                    buf,
                )
            )
            if need.value <= size:
                return json.loads(buf.value.decode("utf-8"))
            size = int(need.value)
