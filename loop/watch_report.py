"""The live watch's figures in ``nextstep report``, from the store (all workers together).

Per arm, the cost of exploration:

* ``explored_share``: offers that exploration chose instead of the policy's best step / offers
  (Wilson 95% interval);
* the accept rate of explored offers and of policy-chosen offers (Wilson 95% intervals);
* ``exploration_cost``: accepted offers lost per offer, ``explored_share * (policy accept rate
  - explored accept rate)``, with a 95% Wald interval of the difference scaled by the share.
  Why this measure: whether an offer explores is drawn at random, independently of the user, so
  explored and policy-chosen offers go to the same population and their difference in accept
  rate is what exploring costs per explored offer; times the share, it is what the budget costs
  per offer. It counts immediate accepts only: an explored step that is declined now may still
  help the user later, so this is an upper bound on the real cost in conversion.

Per arm and step, calibration over the last ``window`` resolved offers (observed accept rate
minus mean predicted ``p_accept``), as ``nextstep_calibration_error`` shows it per worker; per
arm the outcome delay (median and 90th percentile of outcome ts minus decision ts); and per arm
and context key the drift (PSI) of the contexts of its last 1,000 decisions by its newest model
against that model's training data (``features.drift``; the reference comes from the model's
bundle meta, so an arm whose model cannot be read or has no reference has no drift rows).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from evaluation.intervals import Z95, wilson
from features.drift import META_KEY, DriftWindow, parse_reference

CALIBRATION_WINDOW = 200  # the service's NEXTSTEP_WATCH_WINDOW default
DRIFT_WINDOW = 1000  # the service's NEXTSTEP_DRIFT_WINDOW default


@dataclass
class ExplorationCost:
    arm: str
    offers: int
    explored: int
    explored_share: float
    explored_share_low: float
    explored_share_high: float
    explored_accept_rate: float
    explored_accept_low: float
    explored_accept_high: float
    policy_accept_rate: float
    policy_accept_low: float
    policy_accept_high: float
    exploration_cost: float
    exploration_cost_low: float
    exploration_cost_high: float
    delay_p50_s: float
    delay_p90_s: float


@dataclass
class Calibration:
    arm: str
    step: str
    offers: int
    observed: float
    predicted: float
    error: float


@dataclass
class Drift:
    arm: str
    model_version: str
    key: str
    requests: int
    psi: float


def _resolved(decisions: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """Offers (decisions with a step) joined with their outcome, if any."""
    offers = decisions[decisions["step"].notna()]
    out = outcomes[outcomes["decision_id"].notna()][["decision_id", "outcome", "ts"]]
    out = out.rename(columns={"ts": "outcome_ts"})
    return offers.merge(out, on="decision_id", how="left")


def _rate(accepted: int, n: int) -> tuple[float, float, float]:
    lo, hi = wilson(accepted, n)
    return (accepted / n if n else math.nan), lo, hi


def exploration_costs(decisions: pd.DataFrame, outcomes: pd.DataFrame) -> list[ExplorationCost]:
    """One ``ExplorationCost`` per arm with offers, in order of first decision."""
    joined = _resolved(decisions, outcomes)
    order = list(dict.fromkeys(decisions.sort_values(["ts", "created_at"])["arm"]))
    rows: list[ExplorationCost] = []
    for arm in order:
        d = joined[joined["arm"] == arm]
        if d.empty:
            continue
        explored = d["explored"].astype(bool).to_numpy()
        accepted = (d["outcome"] == "accepted").to_numpy()
        n, n_x = len(d), int(explored.sum())
        share, s_lo, s_hi = _rate(n_x, n)
        x_rate, x_lo, x_hi = _rate(int(accepted[explored].sum()), n_x)
        p_rate, p_lo, p_hi = _rate(int(accepted[~explored].sum()), n - n_x)
        cost = lo = hi = math.nan
        if n_x and n - n_x:
            diff = p_rate - x_rate
            se = math.sqrt(x_rate * (1 - x_rate) / n_x + p_rate * (1 - p_rate) / (n - n_x))
            cost, lo, hi = share * diff, share * (diff - Z95 * se), share * (diff + Z95 * se)
        elif n_x == 0:
            cost = lo = hi = 0.0  # nothing explored, nothing lost
        delay = (d["outcome_ts"] - d["ts"]).dropna().clip(lower=0).to_numpy(dtype=float)
        p50, p90 = np.quantile(delay, [0.5, 0.9]) if len(delay) else (math.nan, math.nan)
        rows.append(
            ExplorationCost(
                arm=str(arm),
                offers=n,
                explored=n_x,
                explored_share=share,
                explored_share_low=s_lo,
                explored_share_high=s_hi,
                explored_accept_rate=x_rate,
                explored_accept_low=x_lo,
                explored_accept_high=x_hi,
                policy_accept_rate=p_rate,
                policy_accept_low=p_lo,
                policy_accept_high=p_hi,
                exploration_cost=cost,
                exploration_cost_low=lo,
                exploration_cost_high=hi,
                delay_p50_s=float(p50),
                delay_p90_s=float(p90),
            )
        )
    return rows


def calibration(
    decisions: pd.DataFrame, outcomes: pd.DataFrame, *, window: int = CALIBRATION_WINDOW
) -> list[Calibration]:
    """Per (arm, step): the last ``window`` resolved offers with a prediction, by decision time."""
    joined = _resolved(decisions, outcomes)
    joined = joined[joined["outcome"].notna() & joined["p_accept"].notna()]
    joined = joined.sort_values(["ts", "created_at"], kind="stable")
    rows: list[Calibration] = []
    for (arm, step), g in joined.groupby(["arm", "step"], sort=True):
        g = g.tail(window)
        observed = float((g["outcome"] == "accepted").mean())
        predicted = float(g["p_accept"].astype(float).mean())
        rows.append(
            Calibration(str(arm), str(step), len(g), observed, predicted, observed - predicted)
        )
    return rows


def context_drift(
    decisions: pd.DataFrame,
    meta_for: Callable[[str], Mapping[str, Any] | None],
    *,
    window: int = DRIFT_WINDOW,
) -> list[Drift]:
    """Per arm and context key: PSI of the last ``window`` decisions' contexts by the arm's
    newest model version against the reference in that version's meta (``meta_for``)."""
    rows: list[Drift] = []
    dec = decisions[decisions["model_version"].notna()]
    dec = dec.sort_values(["ts", "created_at"], kind="stable")
    for arm, d in dec.groupby("arm", sort=True):
        version = str(d["model_version"].iloc[-1])
        columns = parse_reference((meta_for(version) or {}).get(META_KEY))
        if not columns:
            continue
        recent = d[d["model_version"].astype(str) == version].tail(window)
        w = DriftWindow(columns, window)
        for ctx in recent["context"]:
            w.observe(json.loads(ctx) if isinstance(ctx, str) and ctx else None)
        for key, value in w.scores().items():
            rows.append(Drift(str(arm), version, key, len(recent), value))
    return rows
