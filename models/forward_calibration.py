"""Which rows calibrate a readiness model, and how it learns about steps it has never seen.

A model is served on the future: later offers, and often steps that did not exist when it was
trained (a new course, a new screen). Its calibration should describe that situation, so
``ReadinessModel.fit`` chooses the rows that calibrate it by a backtest inside its training rows:

* **the backtest** (``backtest_split``, ``latest_calibrates_better``): the latest ``fraction``
  of the rows in time order plays the future; trees fitted on the earliest rows score it, once
  through an isotonic map fitted on a random slice of the earlier rows and once through a map
  fitted on the slice just before the future. The trees are the same, so the difference in log
  loss on the future is the calibration's alone: the latest slice calibrates only when it wins
  by more than three standard errors (``MARGIN_SE``: the error counts the future's rows,
  clustered by user when the users are known, not the maps' own noise). A log whose level
  drifts (a pass rate sliding from one intake to the next) then reads the level where it is
  nearest to serving time; a log that does not drift keeps a random slice, which estimates a
  stable level over the whole log and is not thrown by what only the end of a log holds (in a
  simulated log, fewer first visits);
* **the latest slice** (``latest_split``): the last ``fraction`` of the training rows in time
  order (ties by position) is scored by trees fitted on the earlier rows, and the isotonic map
  is fitted to those scores; a random slice (``random_split``) otherwise, and always for rows
  without times;
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

MARGIN_SE = 3.0
"""How many standard errors of the future's rows the latest slice's gain must exceed. The
error counts the future's rows (by user) but not the noise of the two maps and of the trees,
each fitted on a finite slice; in the simulated worlds a placebo (two maps from two halves of
one random slice, with no true difference) spread 1.5 to 2.5 times wider than that error, and
refitting the same backtest with another thread count moved the gain by one error. Three of
them is about two of the whole noise."""


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


def backtest_split(
    ts: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(fit, random_cal, latest_cal, future)`` row indices of the backtest: in time order
    (ties by position) the latest ``fraction`` of the rows is the future and the ``fraction``
    before it the latest calibration slice; of the rows before those, a random set of the same
    size is the random calibration slice and the rest fit the trees."""
    n = len(ts)
    order = np.lexsort((np.arange(n), np.asarray(ts, dtype=np.float64)))
    k = int(n * fraction)
    past = rng.permutation(order[: n - 2 * k])
    return (
        np.sort(past[k:]),
        np.sort(past[:k]),
        np.sort(order[n - 2 * k : n - k]),
        np.sort(order[n - k :]),
    )


def latest_calibrates_better(
    y: np.ndarray,
    p_random: np.ndarray,
    p_latest: np.ndarray,
    users: np.ndarray | None = None,
) -> bool:
    """Whether the latest slice's probabilities ``p_latest`` of outcomes ``y`` have a lower log
    loss than the random slice's ``p_random`` by more than ``MARGIN_SE`` standard errors of the
    mean paired per-row difference (a difference within noise keeps the random slice).

    ``users``: each row's user. One user's rows share that user's appetite, so their
    differences move together and a per-row standard error would count one user's many rows
    as many independent witnesses; given the users, the error is clustered by user
    (``clustered_se``)."""
    y = np.asarray(y, dtype=np.float64)
    gain = _row_log_loss(y, p_random) - _row_log_loss(y, p_latest)
    if len(gain) < 2:
        return False
    se = row_se(gain) if users is None else clustered_se(gain, np.asarray(users))
    return bool(gain.mean() > MARGIN_SE * se)


def row_se(values: np.ndarray) -> float:
    """Standard error of the mean of ``values`` taken as independent rows."""
    return float(np.std(values, ddof=1)) / np.sqrt(len(values))


def clustered_se(values: np.ndarray, groups: np.ndarray) -> float:
    """Standard error of the mean of ``values`` when rows of one group are correlated: the
    spread of the groups' summed residuals (each group's sum minus its rows times the mean),
    with the small-sample factor G / (G - 1), which makes it equal to ``row_se`` when every
    group has one row; infinite with fewer than two groups."""
    values = np.asarray(values, dtype=np.float64)
    _, g = np.unique(groups, return_inverse=True)
    n_groups = int(g.max()) + 1 if len(g) else 0
    if n_groups < 2:
        return float("inf")
    resid = np.bincount(g, weights=values - values.mean(), minlength=n_groups)
    var = n_groups / (n_groups - 1) * float(resid @ resid) / len(values) ** 2
    return float(np.sqrt(var))


def _row_log_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-15, 1 - 1e-15)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


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
