"""Every logged state with every step that could have been offered there, for learning values.

Fitted Q iteration (``models.fitted_q``) backs up the value of each logged offer from the best
offer at the same user's next logged visit, so it needs, for the state before every logged offer,
the feature rows of all the steps eligible there, not only the one the incumbent chose. The state
part of those rows is the logged row's own (``features.offline``); only the candidate columns
change with the step: its attributes, the effort gap, and how often this user had been offered and
had declined it before. Those per-step counts, and the set of steps accepted so far, are running
sums over each user's run of rows in time order, restarted at every run, as in
``features.offline``: no Python loop per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.catalog import Catalog
from features.offline import OfflineFeatures, _event_order, _user_codes
from features.spec import FeatureSpec, _candidate_columns
from features.state import STATE_FEATURES

_MAX_EFFORT = STATE_FEATURES.index("max_effort")


@dataclass
class Transitions:
    """The logged offers as transitions, in the frame's original row order.

    ``next_row[r]`` is the row of the same user's next offer (-1 when the user made none), and
    candidate ``j`` offers step ``step[j]`` in the state before logged row ``node[j]``; the
    candidates of a row are the steps eligible in that state. Their feature rows are built a
    slice at a time (``rows``): all of them at once would be the log's feature matrix times the
    number of eligible steps.
    """

    next_row: np.ndarray  # (n_rows,) int64
    node: np.ndarray  # (n_candidates,) int64, ascending
    step: np.ndarray  # (n_candidates,) int64
    offers: np.ndarray  # (n_candidates,) int32: offers of the step to this user before
    declines: np.ndarray  # (n_candidates,) int32: declines of it before
    logged: np.ndarray  # (n_rows, n_features): the logged rows (``OfflineFeatures.X``)
    spec: FeatureSpec
    catalog: Catalog

    def __len__(self) -> int:
        return len(self.node)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """The feature rows of candidates ``start:stop``: the logged row's state part, the
        candidate's own columns."""
        node, step = self.node[start:stop], self.step[start:stop]
        X = self.logged[node]
        _candidate_columns(
            X,
            self.spec,
            self.catalog,
            step,
            X[:, _MAX_EFFORT],
            self.offers[start:stop],
            self.declines[start:stop],
        )
        return X


def logged_transitions(
    frame: pd.DataFrame, catalog: Catalog, spec: FeatureSpec, off: OfflineFeatures
) -> Transitions:
    """``Transitions`` of a validated event frame whose offline features are ``off``."""
    n, k = len(frame), catalog.n
    if n == 0:
        e = np.zeros(0, dtype=np.int64)
        return Transitions(e, e, e, e.astype(np.int32), e.astype(np.int32), off.X, spec, catalog)
    tie = frame["row"].to_numpy() if "row" in frame.columns else None
    order, users_s = _event_order(_user_codes(frame["user_id"]), off.ts, tie)
    start = np.empty(n, dtype=bool)
    start[0] = True
    np.not_equal(users_s[1:], users_s[:-1], out=start[1:])
    run_first = np.flatnonzero(start)[np.cumsum(start) - 1]  # sorted position of the run's start

    step_s = off.step_index[order]
    acc_s = off.accepted[order]
    rows = np.arange(n)
    offers = _counts_before(rows, step_s, np.ones(n, dtype=bool), run_first, k)
    declines = _counts_before(rows, step_s, ~acc_s, run_first, k)
    accepted = _counts_before(rows, step_s, acc_s, run_first, k) > 0

    is_goal = catalog.arrays["is_goal"] > 0
    eligible = ~accepted & ~(accepted & is_goal).any(axis=1, keepdims=True)
    if catalog.requires.any():
        eligible &= ((~accepted).astype(np.int64) @ catalog.requires.T) == 0
    if catalog.has_availability:
        eligible &= _available(frame, catalog, spec, k)[order]

    nxt_s = np.full(n, -1, dtype=np.int64)
    same = ~start[1:]
    nxt_s[:-1][same] = order[1:][same]
    inv = np.empty(n, dtype=np.int64)
    inv[order] = rows
    next_row = nxt_s[inv]

    node, step = np.nonzero(eligible[inv])
    s = inv[node]  # sorted position of each candidate's state
    return Transitions(
        next_row=next_row,
        node=node,
        step=step,
        offers=offers[s, step],
        declines=declines[s, step],
        logged=off.X,
        spec=spec,
        catalog=catalog,
    )


def goal_worth_earned(catalog: Catalog, off: OfflineFeatures) -> np.ndarray:
    """What each logged offer won: its goal's worth when a goal was accepted, else 0."""
    worth = np.asarray(catalog.goal_rewards, dtype=np.float64)[off.step_index]
    return np.where(off.accepted, worth, 0.0)


def _counts_before(
    rows: np.ndarray, step_s: np.ndarray, mask: np.ndarray, run_first: np.ndarray, k: int
) -> np.ndarray:
    """(rows, steps) counts of the masked offers of each step earlier in the row's own run."""
    hit = np.zeros((len(rows), k), dtype=np.int32)
    hit[rows[mask], step_s[mask]] = 1
    before = np.cumsum(hit, axis=0, dtype=np.int32)
    before -= hit
    before -= before[run_first]
    return before


def _available(frame: pd.DataFrame, catalog: Catalog, spec: FeatureSpec, k: int) -> np.ndarray:
    """(rows, steps) mask of the steps ``available_when`` lets each row's context see, computed
    once per distinct context."""
    cols = list(spec.context_columns)
    keys = pd.Series(list(zip(*(frame[c].tolist() for c in cols), strict=True)), dtype=object)
    codes, uniques = pd.factorize(keys) if cols else (np.zeros(len(frame), dtype=np.int64), [()])
    bits = 1 << np.arange(k, dtype=np.int64)
    table = np.array(
        [
            catalog.available({c: v for c, v in zip(cols, u, strict=True) if not pd.isna(v)}) & bits
            != 0
            for u in uniques
        ],
        dtype=bool,
    ).reshape(len(uniques), k)
    return table[codes]
