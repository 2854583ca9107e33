"""Vectorised point-in-time features for a whole event log (the offline twin of ``UserState``).

Sorting once by (user, ts, row) and using group-wise cumulative operations computes, for every
offer, the state *before* it, without a Python loop per row. ``tests/features/test_parity.py``
proves the result equals folding each user's history with ``UserState.apply``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.catalog import Catalog
from features.spec import FeatureSpec
from features.state import ACCEPTED, HOUR


@dataclass
class OfflineFeatures:
    """Feature matrix in the ORIGINAL row order of the frame, plus what training needs."""

    X: np.ndarray  # (n_rows, n_features) float64
    accepted: np.ndarray  # (n_rows,) bool: the offer's outcome was 'accepted'
    dropped: np.ndarray  # (n_rows,) bool: 'dropped'
    came_back: np.ndarray  # (n_rows,) bool: the user has a later event
    step_index: np.ndarray  # (n_rows,) int: catalog position of the offered step
    ts: np.ndarray  # (n_rows,) float epoch seconds
    names: list[str]


def build_offline_features(
    frame: pd.DataFrame, catalog: Catalog, spec: FeatureSpec
) -> OfflineFeatures:
    """Point-in-time features for every row of a validated event frame.

    ``frame`` needs ``user_id``, ``ts`` (epoch seconds), ``step``, ``outcome`` and the spec's
    context columns; a ``row`` column breaks ties of equal timestamps (file order otherwise).
    """
    n = len(frame)
    tie = frame["row"].to_numpy() if "row" in frame.columns else np.arange(n)
    user_codes, _ = pd.factorize(frame["user_id"], sort=False)
    ts_all = frame["ts"].to_numpy(dtype=np.float64)
    order = np.lexsort((tie, ts_all, user_codes))
    users = user_codes[order]
    ts = ts_all[order]
    step = frame["step"].map(catalog.index).to_numpy()[order].astype(np.int64)
    acc = (frame["outcome"].to_numpy() == ACCEPTED)[order]
    dropped_sorted = (frame["outcome"].to_numpy() == "dropped")[order]
    dec = ~acc

    idx = np.arange(n)
    start = np.ones(n, dtype=bool)
    start[1:] = users[1:] != users[:-1]
    gs = np.maximum.accumulate(np.where(start, idx, 0))  # group start index per row
    pos = idx - gs  # number of earlier events of this user

    def before_cumsum(x: np.ndarray) -> np.ndarray:
        c = np.cumsum(x, dtype=np.float64)
        excl = c - x
        return excl - (c[gs] - x[gs])

    efforts = np.asarray(catalog.efforts, dtype=np.float64)[step]
    values = np.asarray(catalog.values, dtype=np.float64)[step]
    stages = np.asarray(catalog.stage_indices, dtype=np.float64)[step]
    is_goal = ((catalog.goal_mask >> step) & 1).astype(np.float64)

    n_accepts = before_cumsum(acc.astype(np.float64))
    n_declines = pos - n_accepts

    # consecutive run lengths ending at the previous event
    def run_before(flag: np.ndarray) -> np.ndarray:
        breaker = np.where(~flag, idx, -1)
        last_break = np.maximum.accumulate(np.maximum(breaker, gs - 1))
        prev_break = np.empty(n, dtype=np.int64)
        prev_break[0] = -1
        prev_break[1:] = last_break[:-1]
        run = (idx - 1) - prev_break
        return np.where(pos > 0, run, 0).astype(np.float64)

    cons_accepts = run_before(acc)
    cons_declines = run_before(dec)

    key = pd.Series(users)
    # Group-wise running maxima / sums of accepted quantities, shifted by one event.
    acc_effort = pd.Series(np.where(acc, efforts, 0.0))
    max_effort = _shift_in_group(acc_effort.groupby(key).cummax().to_numpy(), start, 0.0)
    acc_stage = pd.Series(np.where(acc, stages, -1.0))
    stage_reached = _shift_in_group(acc_stage.groupby(key).cummax().to_numpy(), start, -1.0)
    acc_value = pd.Series(np.where(acc, values, 0.0))
    value_received = _shift_in_group(acc_value.groupby(key).cumsum().to_numpy(), start, 0.0)

    first_ts = ts[gs]
    prev_ts = np.where(pos > 0, np.roll(ts, 1), np.nan)
    prev2_ts = np.where(pos > 1, np.roll(ts, 2), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        since_first = np.where(pos > 0, (ts - first_ts) / HOUR, np.nan)
        since_last = np.where(pos > 0, (ts - prev_ts) / HOUR, np.nan)
        mean_gap = np.where(pos > 1, (prev_ts - first_ts) / HOUR / (pos - 1), np.nan)
        last_gap = np.where(pos > 1, (prev_ts - prev2_ts) / HOUR, np.nan)

    us = pd.DataFrame({"u": users, "s": step, "d": dec.astype(np.float64)})
    step_offers = us.groupby(["u", "s"], sort=False).cumcount().to_numpy().astype(np.float64)
    step_declines = us.groupby(["u", "s"], sort=False)["d"].cumsum().to_numpy() - us["d"].to_numpy()

    cols = [
        pos.astype(np.float64),
        n_accepts,
        n_declines.astype(np.float64),
        cons_accepts,
        cons_declines,
        max_effort,
        value_received,
        stage_reached,
        since_first,
        since_last,
        mean_gap,
        last_gap,
        efforts,
        stages,
        values,
        is_goal,
        efforts - max_effort,
        step_offers,
        step_declines,
    ]
    for c in spec.context_columns:
        cols.append(_context_codes(frame[c], spec, c, order, key))
    X_sorted = np.column_stack(cols) if cols else np.empty((n, 0))

    has_next = np.zeros(n, dtype=bool)
    has_next[:-1] = ~start[1:]

    inv = np.empty(n, dtype=np.int64)
    inv[order] = idx
    return OfflineFeatures(
        X=np.ascontiguousarray(X_sorted[inv]),
        accepted=acc[inv],
        dropped=dropped_sorted[inv],
        came_back=has_next[inv],
        step_index=step[inv],
        ts=ts_all,
        names=spec.names,
    )


def _shift_in_group(x: np.ndarray, start: np.ndarray, fill: float) -> np.ndarray:
    out = np.empty_like(x)
    out[0] = fill
    out[1:] = x[:-1]
    out[start] = fill
    return out


def _context_codes(
    col: pd.Series, spec: FeatureSpec, name: str, order: np.ndarray, key: pd.Series
) -> np.ndarray:
    """Encode one context column, forward-filled within each user (latest known value)."""
    cats = spec.categories.get(name)
    values = col.to_numpy()[order]
    if cats is not None:
        as_str = pd.Series(values, dtype=object)
        mask = as_str.isna()
        mapped = pd.Series(
            pd.Categorical(as_str.where(mask, as_str.astype(str)), categories=list(cats)).codes,
            dtype=np.float64,
        )
        # unknown categories get code -1 from Categorical: they are "missing", like online
        unknown = (mapped < 0) & ~mask
        mapped[mapped < 0] = np.nan
        # A present-but-unknown value overrides an older known one (online does the same).
        marker = mapped.copy()
        marker[unknown] = -2.0
        filled = marker.groupby(key.to_numpy()).ffill()
        filled[filled == -2.0] = np.nan
        return filled.to_numpy(dtype=np.float64)
    num = pd.to_numeric(pd.Series(values), errors="coerce").astype(np.float64)
    return num.groupby(key.to_numpy()).ffill().to_numpy(dtype=np.float64)
