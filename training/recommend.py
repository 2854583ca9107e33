"""``nextstep recommend``: batch decisions, one per user, from the state after their history.

The state after each user's history is computed for all users at once with numpy (one sort,
group boundaries, ``reduceat`` and bincounts), not by folding rows in Python or by pandas per
user; it equals ``features.state.fold_history`` over the user's rows in (ts, file row) order
(a test proves it). Then ``models.decide.Decider`` decides per user, exactly as the service
would for that history. "Now" for each user is the time of their last event (the log carries no
other clock), so time-since-last features are 0. Output columns
``user_id, step, stage, p_accept, propensity, policy, reason``, users in order of first
appearance; ``step`` is empty with ``reason`` (``converted``, ``no_eligible_step``) when nothing
should be offered. Steps whose catalog ``available_when`` rules exclude the user's latest context
are never offered; ``--candidates-column COL`` restricts each user further to the step ids of
their latest non-empty ``COL`` value (ids separated by ``|``, ``,`` or ``;``, or a JSON list),
like the HTTP request's ``candidates``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.catalog import Catalog
from features.errors import EventLogError
from features.state import ACCEPTED, UserState
from models.decide import DecisionRequest

MODEL_POLICIES = ("planner", "greedy")
OUTPUT_COLUMNS = ("user_id", "step", "stage", "p_accept", "propensity", "policy", "reason")
CHUNK = 1000  # users decided together: one planner pass per chunk


@dataclass
class FinalStates:
    """Per user (in order of first appearance): id, state after the history, last event time."""

    user_ids: list[str]
    states: list[UserState]
    last_ts: np.ndarray


def final_states(
    frame: pd.DataFrame, catalog: Catalog, context_columns: Sequence[str] = ()
) -> FinalStates:
    """The ``UserState`` after every user's whole history, vectorised over users."""
    n = len(frame)
    codes, uniques = pd.factorize(frame["user_id"], sort=False)
    n_users = len(uniques)
    tie = frame["row"].to_numpy() if "row" in frame.columns else np.arange(n)
    ts_all = frame["ts"].to_numpy(dtype=np.float64)
    order = np.lexsort((tie, ts_all, codes))
    c = codes[order]
    t = ts_all[order]
    step = frame["step"].map(catalog.index).to_numpy()[order].astype(np.int64)
    outcome = frame["outcome"].to_numpy()[order]
    acc = outcome == ACCEPTED
    idx = np.arange(n)
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    ends = np.r_[starts[1:], n] - 1

    n_asks = ends - starts + 1
    n_accepts = np.add.reduceat(acc.astype(np.int64), starts)
    # consecutive accepts / declines at the end: distance to the last row of the other kind
    last_dec = np.maximum.accumulate(np.where(~acc, idx, -1))[ends]
    last_acc = np.maximum.accumulate(np.where(acc, idx, -1))[ends]
    cons_acc = ends - np.maximum(last_dec, starts - 1)
    cons_dec = ends - np.maximum(last_acc, starts - 1)

    efforts = np.asarray(catalog.efforts, dtype=np.float64)[step]
    values = np.asarray(catalog.values, dtype=np.float64)[step]
    stages = np.asarray(catalog.stage_indices, dtype=np.int64)[step]
    max_effort = np.maximum.reduceat(np.where(acc, efforts, 0.0), starts)
    value_received = np.add.reduceat(np.where(acc, values, 0.0), starts)
    stage_reached = np.maximum.reduceat(np.where(acc, stages, -1), starts)
    first_ts, last_ts = t[starts], t[ends]
    prev_ts = np.where(n_asks > 1, t[np.maximum(ends - 1, 0)], np.nan)

    k = catalog.n
    offers = np.bincount(c * k + step, minlength=n_users * k).reshape(n_users, k)
    declines = np.bincount(c[~acc] * k + step[~acc], minlength=n_users * k).reshape(n_users, k)
    accepted = np.bincount(c[acc] * k + step[acc], minlength=n_users * k).reshape(n_users, k) > 0
    masks = _masks(accepted)
    offer_dicts = _sparse_rows(offers)
    decline_dicts = _sparse_rows(declines)
    # time of the latest offer of each (user, step): the last row of each key in sorted order
    key = c * k + step
    by_key = np.argsort(key, kind="stable")  # within a key, rows stay in (ts, row) order
    last_of_key = by_key[np.r_[key[by_key][1:] != key[by_key][:-1], True]]
    step_last = np.full((n_users, k), np.nan)
    step_last[c[last_of_key], step[last_of_key]] = t[last_of_key]
    step_last_dicts = _sparse_rows(step_last, present=~np.isnan(step_last))
    t_list = t.tolist()

    ctx_values: list[tuple[str, np.ndarray, np.ndarray]] = []
    for col in context_columns:
        values_sorted = frame[col].to_numpy()[order]
        present = ~pd.isna(values_sorted)
        last = np.maximum.accumulate(np.where(present, idx, -1))[ends]
        ctx_values.append((col, values_sorted[np.maximum(last, 0)], last >= starts))

    last_outcome = outcome[ends]
    states: list[UserState] = []
    bounds = starts.tolist()
    lists = {
        "n_asks": n_asks.tolist(),
        "n_acc": n_accepts.tolist(),
        "cons_acc": cons_acc.tolist(),
        "cons_dec": cons_dec.tolist(),
        "max_eff": max_effort.tolist(),
        "value": value_received.tolist(),
        "stage": stage_reached.tolist(),
        "first": first_ts.tolist(),
        "last": last_ts.tolist(),
        "prev": prev_ts.tolist(),
        "outcome": np.asarray(last_outcome, dtype=object).tolist(),
    }
    ctx_lists = [(col, vals.tolist(), ok.tolist()) for col, vals, ok in ctx_values]
    for u in range(n_users):
        ctx = {col: vals[u] for col, vals, ok in ctx_lists if ok[u]}
        asks = lists["n_asks"][u]
        accepts = lists["n_acc"][u]
        states.append(
            UserState(
                accepted_mask=masks[u],
                n_asks=asks,
                n_accepts=accepts,
                n_declines=asks - accepts,
                cons_accepts=lists["cons_acc"][u],
                cons_declines=lists["cons_dec"][u],
                max_effort=lists["max_eff"][u],
                value_received=lists["value"][u],
                stage_reached=lists["stage"][u],
                first_ts=lists["first"][u],
                last_ts=lists["last"][u],
                prev_ts=lists["prev"][u],
                step_offers=offer_dicts[u],
                step_declines=decline_dicts[u],
                context=ctx,
                last_outcome=lists["outcome"][u],
                step_last_ts=step_last_dicts[u],
                ask_times=t_list[bounds[u] : bounds[u] + asks],
            )
        )
    # factorize numbers users by first appearance and the sort is by code: group u is user u
    return FinalStates(np.asarray(uniques, dtype=object).tolist(), states, last_ts)


def _masks(accepted: np.ndarray) -> list[int]:
    """Bitmask (Python int) of accepted steps per user; any catalog size."""
    k = accepted.shape[1]
    if k <= 62:
        weights = np.left_shift(np.int64(1), np.arange(k, dtype=np.int64))
        return (accepted.astype(np.int64) @ weights).tolist()
    return [sum(1 << int(j) for j in np.flatnonzero(row)) for row in accepted]


def _sparse_rows(counts: np.ndarray, present: np.ndarray | None = None) -> list[dict]:
    """``{step: value}`` of the non-zero (or ``present``) entries of each row."""
    rows, cols = np.nonzero(counts if present is None else present)
    vals = counts[rows, cols]
    bounds = np.searchsorted(rows, np.arange(counts.shape[0] + 1))
    cl, vl = cols.tolist(), vals.tolist()
    return [
        dict(zip(cl[a:b], vl[a:b], strict=True))
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)
    ]


def recommend_frame(
    frame: pd.DataFrame,
    catalog: Catalog,
    decider: object,
    context_columns: Sequence[str] = (),
    progress: object | None = None,
    candidates: Sequence[list[str] | None] | None = None,
) -> pd.DataFrame:
    """One decision per user of a validated frame (see the module docstring); ``candidates``
    (per user, in order of first appearance; None = any step) restricts the choice."""
    fs = final_states(frame, catalog, context_columns)
    cols: dict[str, list] = {c: [] for c in OUTPUT_COLUMNS}
    n = len(fs.user_ids)
    last_ts = fs.last_ts.tolist()
    for a in range(0, n, CHUNK):
        b = min(a + CHUNK, n)
        requests = [
            DecisionRequest(
                fs.user_ids[u],
                fs.states[u],
                now=last_ts[u],
                candidates=None if candidates is None else candidates[u],
            )
            for u in range(a, b)
        ]
        for r in decider.decide_many(requests, scores=False):  # type: ignore[attr-defined]
            if isinstance(r, Exception):  # no candidates are requested: cannot happen
                raise r
            cols["step"].append(r.step)
            cols["stage"].append(r.stage)
            cols["p_accept"].append(math.nan if r.p_accept is None else r.p_accept)
            cols["propensity"].append(math.nan if r.propensity is None else r.propensity)
            cols["policy"].append(r.policy)
            cols["reason"].append(r.reason)
        if progress is not None:
            progress(b)  # type: ignore[operator]
    cols["user_id"] = list(fs.user_ids)
    text = ("user_id", "step", "stage", "policy", "reason")  # object dtype: None stays None
    return pd.DataFrame(
        {c: pd.Series(v, dtype=object if c in text else np.float64) for c, v in cols.items()}
    )


def user_candidates(
    frame: pd.DataFrame, catalog: Catalog, column: str, source: str
) -> list[list[str] | None]:
    """Per user (in order of first appearance): the step ids of their latest non-empty
    ``column`` value, or None when they have none (then any available step may be offered)."""
    if column not in frame.columns or column in ("user_id", "ts", "step", "outcome", "row"):
        known = [c for c in frame.columns if c not in ("row", "user_id", "ts", "step", "outcome")]
        raise EventLogError(
            f"--candidates-column: no context column {column!r} in the log "
            f"(columns: {', '.join(known) or 'none'})",
            source=source,
            column=column,
        )
    codes, uniques = pd.factorize(frame["user_id"], sort=False)
    values = frame[column].to_numpy(dtype=object)
    tie = frame["row"].to_numpy() if "row" in frame.columns else np.arange(len(frame))
    order = np.lexsort((tie, frame["ts"].to_numpy(dtype=np.float64), codes))
    out: list[list[str] | None] = [None] * len(uniques)
    rows = frame["row"].to_numpy() if "row" in frame.columns else np.arange(1, len(frame) + 1)
    for i in order.tolist():  # later rows overwrite earlier ones: the latest value wins
        ids = _step_ids(values[i])
        if ids is None:
            continue
        unknown = [x for x in ids if x not in catalog.index]
        if unknown:
            raise EventLogError(
                f"unknown step {unknown[0]!r} in the candidates list",
                source=source,
                row=int(rows[i]),
                column=column,
            )
        out[codes[i]] = ids
    return out


def _step_ids(value: object) -> list[str] | None:
    """Step ids from one cell: a list, a JSON list or text separated by ``|``, ``,`` or ``;``;
    None for an empty cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, list | tuple | np.ndarray):
        return [str(x).strip() for x in value if str(x).strip()]
    text = str(value).strip()
    if not text:
        return None
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            return [str(x).strip() for x in parsed if str(x).strip()]
    return [x.strip() for x in re.split(r"[|,;]", text) if x.strip()]
