"""Point-in-time user state and the features built from it (docs/design.md section 7).

One definition, two implementations:

* ``UserState.apply`` folds one user's history event by event. The service calls it per request
  and the planner uses ``UserState.after`` to imagine an outcome.
* ``features.offline.build_offline_features`` computes the same quantities for a whole log with
  vectorised group-wise operations, for training.

``tests/features/test_parity.py`` proves they agree row for row, so a model trained offline sees
exactly the features the service will give it online. Every quantity here describes the user
*before* an offer, so no row can see its own outcome or anything later.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from features.catalog import Catalog

ACCEPTED = "accepted"
DECLINED = "declined"
DROPPED = "dropped"
HOUR = 3600.0
# ``UserState.ask_times`` keeps only the latest asks: the per-period cap of the guardrails
# (``max_asks_per_period``, at most this many) never needs more, and a state stored per user
# (``service.user_state``) stays bounded however long the history.
ASK_TIMES_KEPT = 256

STATE_FEATURES: tuple[str, ...] = (
    "n_asks",
    "n_accepts",
    "n_declines",
    "cons_accepts",
    "cons_declines",
    "max_effort",
    "value_received",
    "stage_reached",
    "hours_since_first",
    "hours_since_last",
    "mean_gap_hours",
    "last_gap_hours",
)
CANDIDATE_FEATURES: tuple[str, ...] = (
    "effort",
    "stage",
    "value",
    "is_goal",
    "effort_gap",
    "step_offers",
    "step_declines",
)


@dataclass(slots=True)
class UserState:
    """What we know about one user just before an offer.

    ``accepted_mask`` is a bitmask over catalog positions. Declines count ``declined`` and
    ``dropped`` alike (both are a "no"). Times are epoch seconds; derived time features are hours.
    """

    accepted_mask: int = 0
    n_asks: int = 0
    n_accepts: int = 0
    n_declines: int = 0
    cons_accepts: int = 0
    cons_declines: int = 0
    max_effort: float = 0.0
    value_received: float = 0.0
    stage_reached: int = -1
    first_ts: float = math.nan
    last_ts: float = math.nan
    prev_ts: float = math.nan
    step_offers: dict[int, int] = field(default_factory=dict)
    step_declines: dict[int, int] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    last_outcome: str | None = None
    step_last_ts: dict[int, float] = field(default_factory=dict)  # for guardrail cooldowns
    # the latest ASK_TIMES_KEPT ask times, oldest first: for guardrail caps per period
    ask_times: list[float] = field(default_factory=list)

    def converted(self, catalog: Catalog) -> bool:
        return bool(self.accepted_mask & catalog.goal_mask)

    def copy(self, *, share_context: bool = False) -> UserState:
        """An independent copy; ``share_context`` reuses the context dict (read-only use)."""
        return UserState(
            self.accepted_mask,
            self.n_asks,
            self.n_accepts,
            self.n_declines,
            self.cons_accepts,
            self.cons_declines,
            self.max_effort,
            self.value_received,
            self.stage_reached,
            self.first_ts,
            self.last_ts,
            self.prev_ts,
            dict(self.step_offers),
            dict(self.step_declines),
            self.context if share_context else dict(self.context),
            self.last_outcome,
            dict(self.step_last_ts),
            list(self.ask_times),
        )

    def apply(
        self,
        catalog: Catalog,
        step: int,
        outcome: str,
        ts: float,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        """Fold one offer and its outcome into the state (in place)."""
        if context:
            for k, v in context.items():
                if not is_missing(v):
                    self.context[k] = v
        if math.isnan(self.first_ts):
            self.first_ts = ts
        self.prev_ts = self.last_ts
        self.last_ts = ts
        self.n_asks += 1
        self.step_offers[step] = self.step_offers.get(step, 0) + 1
        self.last_outcome = outcome
        self.step_last_ts[step] = ts
        self.ask_times.append(ts)
        if len(self.ask_times) > ASK_TIMES_KEPT:
            del self.ask_times[0]
        if outcome == ACCEPTED:
            self.n_accepts += 1
            self.cons_accepts += 1
            self.cons_declines = 0
            self.accepted_mask |= 1 << step
            effort = catalog.efforts[step]
            if effort > self.max_effort:
                self.max_effort = effort
            self.value_received += catalog.values[step]
            stage = catalog.stage_indices[step]
            if stage > self.stage_reached:
                self.stage_reached = stage
        else:
            self.n_declines += 1
            self.cons_declines += 1
            self.cons_accepts = 0
            self.step_declines[step] = self.step_declines.get(step, 0) + 1

    def after(self, catalog: Catalog, step: int, outcome: str, ts: float) -> UserState:
        """A copy with one more (imagined) outcome: the planner's look-ahead."""
        nxt = self.copy(share_context=True)  # imagined outcomes carry no new context
        nxt.apply(catalog, step, outcome, ts)
        return nxt

    def state_vector(self, now: float) -> list[float]:
        """The STATE_FEATURES, in order, as seen at time ``now``."""
        since_first, since_last, mean_gap, last_gap = time_features(
            self.n_asks, self.first_ts, self.last_ts, self.prev_ts, now
        )
        return [
            float(self.n_asks),
            float(self.n_accepts),
            float(self.n_declines),
            float(self.cons_accepts),
            float(self.cons_declines),
            self.max_effort,
            self.value_received,
            float(self.stage_reached),
            since_first,
            since_last,
            mean_gap,
            last_gap,
        ]


TIME_FEATURES: tuple[str, ...] = STATE_FEATURES[8:12]


def time_features(
    n_asks: int, first_ts: float, last_ts: float, prev_ts: float, now: float
) -> tuple[float, float, float, float]:
    """``hours_since_first, hours_since_last, mean_gap_hours, last_gap_hours`` at ``now``.

    One function, so the planner's cache key (which bins these values for imagined future
    visits) computes exactly the floats the feature rows will contain.
    """
    if n_asks == 0:
        return math.nan, math.nan, math.nan, math.nan
    since_first = (now - first_ts) / HOUR
    since_last = (now - last_ts) / HOUR
    if n_asks > 1:
        return (
            since_first,
            since_last,
            (last_ts - first_ts) / HOUR / (n_asks - 1),
            (last_ts - prev_ts) / HOUR,
        )
    return since_first, since_last, math.nan, math.nan


def fold_history(
    catalog: Catalog,
    events: Iterable[tuple[str, str, float, Mapping[str, Any] | None]],
) -> UserState:
    """State after a user's history of ``(step_id, outcome, ts, context)``, oldest first.

    Steps no longer in the catalog are skipped: a catalog may drop a step while the store still
    remembers offers of it.
    """
    state = UserState()
    index = catalog.index
    for step_id, outcome, ts, ctx in events:
        i = index.get(step_id)
        if i is None:
            if ctx:
                state.context.update({k: v for k, v in ctx.items() if not is_missing(v)})
            continue
        state.apply(catalog, i, outcome, ts, ctx)
    return state


def is_missing(v: Any) -> bool:
    """None or NaN: a context value that says nothing (and must not erase a known one)."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def merged_context(known: Mapping[str, Any], request: Mapping[str, Any] | None) -> dict[str, Any]:
    """The user's known context overlaid with a request's non-missing values: the context a
    decision sees (features and ``available_when`` alike)."""
    merged = dict(known)
    if request:
        merged.update({k: v for k, v in request.items() if not is_missing(v)})
    return merged


@dataclass(slots=True)
class StateColumns:
    """Many ``UserState``s as columns: the planner's look-ahead nodes, one row per node.

    Only what the feature rows and eligibility need is kept (no context, cooldown times or
    ask times). ``after`` is ``UserState.after`` for many rows at once and ``vectors`` is
    ``UserState.state_vector``; both do the same float operations in the same order, so every
    number equals the one the per-state code computes (``tests/models/test_plan_many.py``).
    """

    n_asks: np.ndarray  # int64, per node
    n_accepts: np.ndarray
    n_declines: np.ndarray
    cons_accepts: np.ndarray
    cons_declines: np.ndarray
    max_effort: np.ndarray  # float64
    value_received: np.ndarray
    stage_reached: np.ndarray  # int64
    first_ts: np.ndarray  # float64
    last_ts: np.ndarray
    prev_ts: np.ndarray
    accepted: np.ndarray  # bool (nodes, catalog steps)
    offers: np.ndarray  # int64 (nodes, catalog steps): step_offers
    declines: np.ndarray  # int64 (nodes, catalog steps): step_declines
    # bool (nodes, catalog steps): steps the catalog's ``available_when`` rules out for the
    # node's user (None: every step exists); children inherit their parent's
    unavailable: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.n_asks)

    @classmethod
    def from_states(cls, states: Sequence[UserState], n_steps: int) -> StateColumns:
        n = len(states)
        ints = np.array(
            [
                (
                    s.n_asks,
                    s.n_accepts,
                    s.n_declines,
                    s.cons_accepts,
                    s.cons_declines,
                    s.stage_reached,
                )
                for s in states
            ],
            dtype=np.int64,
        ).reshape(n, 6)
        floats = np.array(
            [(s.max_effort, s.value_received, s.first_ts, s.last_ts, s.prev_ts) for s in states],
            dtype=np.float64,
        ).reshape(n, 5)
        accepted = np.zeros((n, n_steps), dtype=bool)
        offers = np.zeros((n, n_steps), dtype=np.int64)
        declines = np.zeros((n, n_steps), dtype=np.int64)
        for i, s in enumerate(states):
            m = s.accepted_mask
            while m:
                low = m & -m
                accepted[i, low.bit_length() - 1] = True
                m ^= low
            for j, c in s.step_offers.items():
                offers[i, j] = c
            for j, c in s.step_declines.items():
                declines[i, j] = c
        return cls(
            ints[:, 0].copy(),
            ints[:, 1].copy(),
            ints[:, 2].copy(),
            ints[:, 3].copy(),
            ints[:, 4].copy(),
            floats[:, 0].copy(),
            floats[:, 1].copy(),
            ints[:, 5].copy(),
            floats[:, 2].copy(),
            floats[:, 3].copy(),
            floats[:, 4].copy(),
            accepted,
            offers,
            declines,
        )

    def after(
        self,
        catalog: Catalog,
        parent: np.ndarray,
        step: np.ndarray,
        accepted: np.ndarray,
        ts: np.ndarray,
    ) -> StateColumns:
        """Row ``r`` is ``UserState.after(step[r], ACCEPTED if accepted[r] else DECLINED,
        ts[r])`` of node ``parent[r]``."""
        arr = catalog.arrays
        r = np.arange(len(parent))
        acc = accepted
        dec = ~accepted
        n_asks = self.n_asks[parent] + 1
        n_accepts = self.n_accepts[parent] + acc
        n_declines = self.n_declines[parent] + dec
        cons_accepts = np.where(acc, self.cons_accepts[parent] + 1, 0)
        cons_declines = np.where(acc, 0, self.cons_declines[parent] + 1)
        max_effort = self.max_effort[parent]
        effort = arr["effort"][step]
        max_effort = np.where(acc & (effort > max_effort), effort, max_effort)
        value_received = self.value_received[parent]
        value_received = np.where(acc, value_received + arr["value"][step], value_received)
        stage_reached = self.stage_reached[parent]
        stage = np.asarray(catalog.stage_indices, dtype=np.int64)[step]
        stage_reached = np.where(acc & (stage > stage_reached), stage, stage_reached)
        first = self.first_ts[parent]
        first_ts = np.where(np.isnan(first), ts, first)
        prev_ts = self.last_ts[parent]
        mask = self.accepted[parent]
        mask[r[acc], step[acc]] = True
        offers = self.offers[parent]
        offers[r, step] += 1
        declines = self.declines[parent]
        declines[r[dec], step[dec]] += 1
        return StateColumns(
            n_asks,
            n_accepts,
            n_declines,
            cons_accepts,
            cons_declines,
            max_effort,
            value_received,
            stage_reached,
            first_ts,
            np.asarray(ts, dtype=np.float64),
            prev_ts,
            mask,
            offers,
            declines,
            None if self.unavailable is None else self.unavailable[parent],
        )

    def take(self, rows: np.ndarray) -> StateColumns:
        """The nodes ``rows`` (repeats allowed), as a new block."""
        return StateColumns(
            *(getattr(self, f)[rows] for f in _COLUMN_FIELDS),
            None if self.unavailable is None else self.unavailable[rows],
        )

    def vectors(self, now: np.ndarray) -> np.ndarray:
        """The STATE_FEATURES of every node at its own time ``now[i]``: (nodes, 12)."""
        out = np.empty((len(self), len(STATE_FEATURES)), dtype=np.float64)
        out[:, 0] = self.n_asks
        out[:, 1] = self.n_accepts
        out[:, 2] = self.n_declines
        out[:, 3] = self.cons_accepts
        out[:, 4] = self.cons_declines
        out[:, 5] = self.max_effort
        out[:, 6] = self.value_received
        out[:, 7] = self.stage_reached
        out[:, 8:12] = time_feature_columns(
            self.n_asks, self.first_ts, self.last_ts, self.prev_ts, now
        )
        return out


# every per-node column of ``StateColumns`` (``take`` copies them all)
_COLUMN_FIELDS = tuple(f.name for f in fields(StateColumns) if f.name != "unavailable")


def time_feature_columns(
    n_asks: np.ndarray, first_ts: np.ndarray, last_ts: np.ndarray, prev_ts: np.ndarray, now: Any
) -> np.ndarray:
    """``time_features`` for many nodes at once, (nodes, 4), the same floats element by element."""
    out = np.full((len(n_asks), 4), math.nan)
    seen = n_asks > 0
    out[:, 0] = np.where(seen, (now - first_ts) / HOUR, math.nan)
    out[:, 1] = np.where(seen, (now - last_ts) / HOUR, math.nan)
    more = n_asks > 1
    if more.any():
        denom = np.where(more, n_asks - 1, 1)
        out[:, 2] = np.where(more, (last_ts - first_ts) / HOUR / denom, math.nan)
        out[:, 3] = np.where(more, (last_ts - prev_ts) / HOUR, math.nan)
    return out
