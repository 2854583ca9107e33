"""What a champion made by ``nextstep train --refit`` may fairly be judged on.

A refitted bundle was fitted on every offer of its log, holdout included. A later run's log
overlaps that log wherever it is a retraining (``retrain``, the learning loop's sliding
windows), so the champion's log loss on the later run's holdout, or its planner's value on the
later run's held-out users, would be partly in-sample, and candidates would lose to it for
that reason alone. Its bundle records the newest offer it saw (meta ``REFIT_UNTIL``), and every
gate judges it only on what came after: the held-out offers newer than that (``fair_rows``, for
log loss) and the users who arrived after it (``unseen_users``, for the planner's value).
A champion fitted on the training rows only is judged on the whole holdout, as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from evaluation.evaluate import log_loss
from features.timeutil import parse_ts

REFIT_UNTIL = "refit_until"  # bundle meta: the newest offer a ``--refit`` bundle was fitted on
MIN_FRESH_OFFERS = 200  # held-out offers a refitted champion never saw, for a fair log loss


@dataclass(frozen=True)
class FairRows:
    """Which held-out offers a champion can fairly be scored on (``fair_rows``): ``rows`` None
    and ``unfair`` None means all of them."""

    rows: np.ndarray | None = None
    unfair: str | None = None
    scope: str = "on the same holdout"
    seen: str = ""  # what the champion was fitted on, when it matters

    def log_losses(
        self, y: np.ndarray, p_candidate: np.ndarray, p_champion: np.ndarray
    ) -> tuple[float, float]:
        """The candidate's and the champion's log loss on these rows (all, when ``rows`` is
        None): the one comparison every gate makes."""
        rows = slice(None) if self.rows is None else self.rows
        return log_loss(y[rows], p_candidate[rows]), log_loss(y[rows], p_champion[rows])


def fair_rows(meta: Mapping[str, Any], version: str, y: np.ndarray, ts: np.ndarray) -> FairRows:
    """The held-out offers (outcomes ``y`` at times ``ts``) newer than the data a champion with
    bundle meta ``meta`` was refitted on; all of them when it was not refitted or saw none of
    them; none, with the reason, when fewer than ``MIN_FRESH_OFFERS`` remain or they hold only
    one outcome (a log loss on them would be noise)."""
    until = meta.get(REFIT_UNTIL)
    if until is None or not len(ts) or ts.min() > parse_ts(until):
        return FairRows()
    fresh = ts > parse_ts(until)
    n = int(fresh.sum())
    seen = f"champion v{version} was refitted on every offer up to {until}"
    if n < MIN_FRESH_OFFERS or len(np.unique(y[fresh])) < 2:
        return FairRows(
            unfair=(
                f"{seen}: only {n} of this holdout's {len(y)} offers are newer, and a fair "
                f"comparison needs {MIN_FRESH_OFFERS} with both outcomes; the champion stays"
            )
        )
    scope = f"on the {n} of {len(y)} held-out offers newer than its data ({seen})"
    return FairRows(fresh, scope=scope, seen=seen)


def no_unseen_users(meta: Mapping[str, Any], version: str) -> str:
    """Why a refitted champion's planner cannot be valued when ``unseen_users`` is empty: the
    one sentence the learner's gate and ``train --policy-gate`` abstain with."""
    return (
        f"no held-out user arrived after the data champion v{version} was refitted on "
        f"(up to {meta[REFIT_UNTIL]})"
    )


def unseen_users(meta: Mapping[str, Any], events: pd.DataFrame) -> pd.DataFrame | None:
    """The events of the users whose first event is newer than the data a champion with bundle
    meta ``meta`` was refitted on (a validated frame: numeric ``ts``); None when it was not
    refitted. A user seen before that time is left out whole: a planner walks a user's
    history, and the champion was fitted on its start."""
    until = meta.get(REFIT_UNTIL)
    if until is None:
        return None
    first = events.groupby("user_id", sort=False)["ts"].transform("min").to_numpy()
    return events.loc[first > parse_ts(until)]
