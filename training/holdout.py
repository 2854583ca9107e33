"""Which logged offers train the models and which judge them (``nextstep train --holdout-*``).

Two strategies, one value object so both engines (one machine, Dask) and the MLflow run agree:

* ``time`` (the default): a calendar cut. Every offer at or after the cut is held out, every
  offer before it trains; nothing in training happened at or after the cut. The cut is
  ``--holdout-from TS`` or, by default, the time of the offer that starts the last
  ``fraction`` of the log in time order (so at least that share of the offers is held out;
  offers at the same instant stay together). A share of the offers rather than of the clock:
  logs thin out at their end (a few stragglers come back weeks later), so the last 20% of the
  clock can hold under 1% of the offers. Users may straddle the cut: their
  held-out offers keep their whole history for features, because features are point-in-time
  (each row sees only that user's earlier rows, whichever side of the cut they fall on). This
  is what a
  data scientist expects from a log in which whole cohorts start on the same day: the model is
  judged on the future, not on other people from the same past.
* ``arrival``: the latest-arriving whole users (by first event, ties by file order) that make
  up at least ``fraction`` of the rows. Useful when the question is "how well does it do for
  brand-new users", but with cohorts that start together it puts later offers in training than
  in the holdout, so it is no longer the default.

Caveat of the time cut: the come-back label of a training offer shortly before the cut may be
decided by an event after it (the label is "the user has a later event"). Readiness, the model
the run's metrics describe, never looks past its own row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from features.errors import NextstepError
from features.timeutil import iso_seconds, parse_ts

HOLDOUT_FRACTION = 0.2
STRATEGIES = ("time", "arrival")
Strategy = Literal["time", "arrival"]


class HoldoutError(NextstepError, ValueError):
    """The holdout cannot be made as asked (bad option, or one side would be empty)."""


@dataclass(frozen=True)
class Holdout:
    """How to split a log; ``cut`` is resolved against the log by ``resolve``."""

    strategy: Strategy = "time"
    fraction: float = HOLDOUT_FRACTION
    start: float | None = None  # --holdout-from, epoch seconds

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise HoldoutError(
                f"--holdout-by must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
            )
        if not (isinstance(self.fraction, int | float) and 0 < self.fraction < 1):
            raise HoldoutError(f"--holdout-fraction must be in (0, 1), got {self.fraction!r}")
        if self.start is not None:
            if self.strategy != "time":
                raise HoldoutError("--holdout-from is a calendar cut: it needs --holdout-by time")
            if not math.isfinite(self.start):
                raise HoldoutError("--holdout-from must be a finite time")

    @classmethod
    def of(
        cls,
        strategy: str = "time",
        fraction: float | None = None,
        start: str | float | None = None,
    ) -> Holdout:
        """From command-line values: ``start`` is ISO-8601 or epoch seconds."""
        ts: float | None = None
        if start is not None and start != "":
            try:
                ts = parse_ts(start)
            except ValueError as exc:
                raise HoldoutError(f"--holdout-from: {exc}") from None
        if fraction is not None and start is not None and start != "":
            raise HoldoutError("give --holdout-from or --holdout-fraction, not both")
        return cls(
            strategy=strategy,  # type: ignore[arg-type]
            fraction=HOLDOUT_FRACTION if fraction is None else fraction,
            start=ts,
        )

    def rows_held_out(self, n_rows: int) -> int:
        """How many offers (at least) the default cut holds out of ``n_rows``."""
        return max(1, math.ceil(self.fraction * n_rows))

    def cut(self, ts: np.ndarray) -> float:
        """The calendar cut for a log with offer times ``ts`` (time strategy only)."""
        if self.start is not None:
            return self.start
        if len(ts) == 0:
            raise HoldoutError("the event log is empty")
        k = self.rows_held_out(len(ts))
        return float(np.partition(ts, len(ts) - k)[len(ts) - k])

    def mask(self, frame: pd.DataFrame) -> np.ndarray:
        """Per row of a validated frame: is it held out? Both sides are checked non-empty."""
        if self.strategy == "arrival":
            return arrival_mask(frame, self.fraction)
        ts = frame["ts"].to_numpy(dtype=np.float64)
        cut = self.cut(ts)
        ho = ts >= cut
        check_sides(int((~ho).sum()), int(ho.sum()), cut)
        return ho

    def describe(self, cut: float | None) -> dict[str, Any]:
        """What the MLflow run records (params and bundle meta)."""
        out: dict[str, Any] = {"strategy": self.strategy, "fraction": self.fraction}
        if self.strategy == "time":
            out["from"] = iso_seconds(cut) if cut is not None else None
            out["from_ts"] = cut
            out["from_given"] = self.start is not None
        return out


def check_sides(n_train: int, n_holdout: int, cut: float) -> None:
    """A clear error when a calendar cut leaves one side empty."""
    if n_holdout == 0:
        raise HoldoutError(
            f"no offer at or after the holdout cut {iso_seconds(cut)}: move --holdout-from"
        )
    if n_train == 0:
        raise HoldoutError(
            f"no offer before the holdout cut {iso_seconds(cut)}: move --holdout-from"
        )


def arrival_mask(frame: pd.DataFrame, fraction: float = HOLDOUT_FRACTION) -> np.ndarray:
    """Rows of the latest-arriving users (by first event, ties by file order) that make up at
    least ``fraction`` of the rows; at least one user on each side."""
    if not 0 < fraction < 1:
        raise ValueError("holdout fraction must be in (0, 1)")
    codes, uniques = pd.factorize(frame["user_id"], sort=False)  # code order = first appearance
    n_users = len(uniques)
    if n_users < 2:
        raise NextstepError("training needs at least two users (one for the holdout)")
    ts = frame["ts"].to_numpy(dtype=np.float64)
    first = pd.Series(ts).groupby(codes).min().to_numpy()
    counts = np.bincount(codes, minlength=n_users)
    order = np.lexsort((np.arange(n_users), first))  # arrival order
    from_end = np.cumsum(counts[order][::-1])
    k = int(np.searchsorted(from_end, fraction * len(frame)) + 1)  # users in the holdout
    k = min(max(k, 1), n_users - 1)
    is_holdout_user = np.zeros(n_users, dtype=bool)
    is_holdout_user[order[::-1][:k]] = True
    return is_holdout_user[codes]


def users_with(frame: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """Every row of the users that have at least one of ``rows``: a held-out offer's history."""
    codes, _ = pd.factorize(frame["user_id"], sort=False)
    hit = np.zeros(int(codes.max()) + 1 if len(codes) else 0, dtype=bool)
    hit[codes[rows]] = True
    return hit[codes]
