"""Which rows calibrate a readiness model, and how it learns about steps it has never seen.

A model is served on the future: later offers, and often steps that did not exist when it was
trained (a new course, a new screen). Its calibration should describe that situation, so
``ReadinessModel.fit`` calibrates on the rows closest to it:

* **the latest slice** (``latest_split``): given the offers' times, the last ``fraction`` of the
  training rows in time order (ties by position) is scored by trees fitted on the earlier rows,
  and the isotonic map is fitted to those scores. A level that drifts over the log (a pass rate
  sliding from one intake to the next) is then read where it is nearest to serving time, not
  averaged over the whole log as a random slice does (``random_split``, kept for rows without
  times);
* **new steps** (``new_values``, ``hide_at_rate``): in that forward split, the slice's offers of
  steps the earlier rows never had are what serving meets as a new step; they are scored with
  the step id missing, as serving encodes a step the model has not seen. And because a tree
  sends a missing value wherever it pleases unless it saw some in training, the step id is
  hidden from a random share of the training rows equal to the slice's share of new-step
  offers: the trees learn the attribute-only prior for a new step as often as the forward split
  says it is needed (none at all in a log whose steps all appear early).
"""

from __future__ import annotations

import numpy as np


def random_split(
    n: int, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, calibrate)`` row indices: a random ``fraction`` of ``n`` rows calibrates."""
    perm = rng.permutation(n)
    n_cal = int(n * fraction)
    return perm[n_cal:], perm[:n_cal]


def latest_split(ts: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, calibrate)`` row indices: the latest ``fraction`` of the rows by time (ties by
    position) calibrates, every earlier row fits."""
    n = len(ts)
    order = np.lexsort((np.arange(n), np.asarray(ts, dtype=np.float64)))
    n_cal = int(n * fraction)
    return np.sort(order[: n - n_cal]), np.sort(order[n - n_cal :])


def new_values(seen: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per entry of ``values``: a category code absent from ``seen`` (missing counts as seen:
    it is already what a new value becomes)."""
    known = np.unique(seen[~np.isnan(seen)])
    return ~np.isnan(values) & ~np.isin(values, known)


def hide_at_rate(X: np.ndarray, column: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """``X`` with ``column`` set missing in a random ``rate`` share of the rows (a copy; ``X``
    itself when ``rate`` is 0)."""
    if rate <= 0:
        return X
    out = X.copy()
    out[rng.random(len(X)) < rate, column] = np.nan
    return out
