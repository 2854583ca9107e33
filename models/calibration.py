"""The isotonic calibration map, shared by training (``ReadinessModel``) and serving
(``models.serving``): one formula, so a served probability is the trained model's to the bit."""

from __future__ import annotations

import numpy as np

EPS = 1e-4
TIE_BREAK = 1e-6


def calibrated(
    raw: np.ndarray, knots_x: np.ndarray | None, knots_y: np.ndarray | None
) -> np.ndarray:
    """Calibrated probabilities from a booster's raw output, on the isotonic map's knots.

    The fitted isotonic map is piecewise linear: ``np.interp`` on its knots gives its numbers
    without scikit-learn's per-call validation (milliseconds on the hot path). Isotonic steps
    create ties; a tiny share of the raw score keeps the order (AUC). No knots: no calibration.
    """
    if knots_x is not None:
        raw = np.interp(raw, knots_x, knots_y) + TIE_BREAK * (raw - 0.5)
    return np.clip(raw, EPS, 1 - EPS)
