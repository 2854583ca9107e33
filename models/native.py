"""LightGBM's C predictor called directly, for the planner's many small batches.

``Booster.predict`` spends tens of microseconds per call in Python before a single tree runs
(a predictor object, a deep copy of the parameters, a parameter string, a size query); the
planner makes about a dozen calls of a few rows per decision, so that overhead was most of a
decision's model time. ``NativePredictor`` does the same ``LGBM_BoosterPredictForMat`` call with
everything fixed once, and returns exactly the numbers ``booster.predict(X, num_threads=1)``
returns (``tests/models/test_native.py``). If this LightGBM build lacks the private helpers it
relies on, it falls back to ``booster.predict``.

Large blocks (``recommend`` and batch look-aheads score thousands of rows per call) run on every
core: each row is predicted on its own, so the numbers do not depend on the thread count; a
small block stays on one thread, where starting OpenMP's team would cost more than it saves.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

import numpy as np

try:  # private, but stable across LightGBM 3.x/4.x; pinned by uv.lock and checked by a test
    from lightgbm.basic import _LIB, _c_str, _safe_call

    _NATIVE = True
except ImportError:  # pragma: no cover - depends on the installed LightGBM
    _NATIVE = False

_FLOAT64 = 1  # C_API_DTYPE_FLOAT64
_PREDICT_NORMAL = 0  # C_API_PREDICT_NORMAL: probabilities for a binary objective
_ROW_MAJOR = 1
# From this many rows a call is split over the cores (below it one thread is faster).
PARALLEL_ROWS = 2048


class NativePredictor:
    """``booster.predict(X, num_threads=1)`` for a binary booster, without the Python layer."""

    def __init__(self, booster: Any) -> None:
        self.booster = booster  # keeps the native handle alive
        self.n_features = int(booster.num_feature())
        self._num_iteration = int(booster.best_iteration)  # what Booster.predict uses
        self._native = _NATIVE and int(booster.num_model_per_iteration()) == 1
        if self._native:
            self._params = _c_str("num_threads=1")
            self._params_parallel = _c_str(f"num_threads={max(1, os.cpu_count() or 1)}")

    def __call__(self, X: np.ndarray) -> np.ndarray:
        if not self._native:
            return self.booster.predict(X, num_threads=1)
        X = np.ascontiguousarray(X, dtype=np.float64)
        n = X.shape[0]
        out = np.empty(n, dtype=np.float64)
        if n == 0:
            return out
        if X.shape[1] != self.n_features:
            raise ValueError(f"expected {self.n_features} features, got {X.shape[1]}")
        written = ctypes.c_int64(0)
        _safe_call(
            _LIB.LGBM_BoosterPredictForMat(
                self.booster._handle,
                X.ctypes.data_as(ctypes.c_void_p),
                ctypes.c_int(_FLOAT64),
                ctypes.c_int32(n),
                ctypes.c_int32(X.shape[1]),
                ctypes.c_int(_ROW_MAJOR),
                ctypes.c_int(_PREDICT_NORMAL),
                ctypes.c_int(0),
                ctypes.c_int(self._num_iteration),
                self._params_parallel if n >= PARALLEL_ROWS else self._params,
                ctypes.byref(written),
                out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
            )
        )
        if written.value != n:
            raise ValueError(f"LightGBM wrote {written.value} predictions for {n} rows")
        return out
