"""Decision regret: each of a policy's decisions scored against the world's exact values.

A policy's conversion over 2,000 simulated users carries a Monte Carlo error of about 2.5% of
its value, so two policies a point apart cannot be told apart in one world. Regret measures the
same walk with far less noise: at every offer the user's belief (the type-blind reference's
posterior over hidden types, from context, outcomes and return gaps) weights each type's exact
optimal Q (``ExactSolver.q_optimal``), and the decision is charged what it gives up against the
best eligible step, ``max_s Q(s) - Q(chosen)``. A user's regret is the sum over the offers made
to them; the outcome coins no longer enter, only which states the policy reached.

The measure is a proxy, not an exact value loss: the optimal Q assumes the optimum continues
from the next state, and a type-aware one at that, so it charges what a planner that knows the
user's type would do next. It is zero for the type-blind reference (which picks the argmax of
the same sum), never negative, and tracks the conversion ratio across worlds; see the README.
"""

from __future__ import annotations

import math
import threading
import zlib
from collections.abc import Callable

import numpy as np

from features.state import UserState
from models.baselines import big_ask_choice, ladder_choice
from simulation.simulate import SimState, SimUser, TypeBlindReference
from simulation.worlds import World

# (folded state, user) -> the step to offer, or None: a walk's chooser (``walk_user``)
Choose = Callable[[UserState, SimUser], "int | None"]


class UserRegret:
    """One user's walk as the meter sees it: the belief over types and the regret so far.

    A walker calls ``charge`` with each step it offers (before the user answers) and
    ``observe`` once the user answered and came back."""

    def __init__(self, meter: RegretMeter, u: SimUser) -> None:
        self.meter = meter
        self.user = u
        self.available = meter.world.catalog.available(u.context)
        self.belief = meter.reference.prior(u.context)
        self.regret = 0.0
        self.before: SimState = u.state  # the state the latest charged offer was made in

    def charge(self, step: int) -> None:
        """Add what offering ``step`` in the user's present state gives up (an ineligible step
        is counted by the walker as invalid, not here), and keep that state for ``observe``."""
        u = self.user
        self.before = u.state
        eligible = self.meter.world.catalog.eligible_indices(u.state[0], self.available)
        if step in eligible:
            q = self.meter.belief_q(self.belief, u.state, eligible)
            self.regret += float(q.max() - q[eligible.index(step)])

    def observe(self, step: int, outcome: str, gap_hours: float) -> None:
        """The user answered ``step`` (offered in the state ``charge`` kept) and came back
        ``gap_hours`` later: update the belief as the type-blind reference does."""
        self.belief = self.meter.reference.update(
            self.belief, self.before, step, outcome, gap_hours
        )


class RegretMeter:
    """The regret of every walked user, by user id (``per_user``, goal-worth units).

    A walker (``simulation.rollout.OverHttp`` given ``meter=``, or ``Metered`` around any
    chooser: a decider's, a peer's, a fixed rule's) gets a ``UserRegret`` for each user's walk
    from ``start`` and hands it back to ``finish``. Walks may run in threads (``OverHttp``):
    each has its own tracker, and ``finish`` takes a lock."""

    def __init__(self, world: World, reference: TypeBlindReference | None = None) -> None:
        self.world = world
        self.reference = reference or TypeBlindReference(world)
        for t in world.types:  # solve up front: walks in threads then only read the levels
            self.reference.solver.optimal_value_fn(t)
        self.per_user: dict[str, float] = {}
        self._lock = threading.Lock()

    def start(self, u: SimUser) -> UserRegret:
        return UserRegret(self, u)

    def finish(self, tracker: UserRegret) -> None:
        with self._lock:
            self.per_user[tracker.user.user_id] = tracker.regret

    def belief_q(self, belief: np.ndarray, state: SimState, eligible: list[int]) -> np.ndarray:
        """Each eligible step's optimal Q in ``state``, averaged over the types by ``belief``."""
        q = np.zeros(len(eligible))
        for k, t in enumerate(self.world.types):
            if belief[k] < 1e-6:
                continue
            values = self.reference.solver.q_optimal(t, state)
            q += belief[k] * np.array([values[s] for s in eligible])
        return q

    def summary(self) -> tuple[float, float]:
        """Mean regret per user and its standard error."""
        return _mean_se(np.fromiter(self.per_user.values(), dtype=np.float64))


def fixed_rule_choosers(world: World, seed: int) -> dict[str, Choose]:
    """The fixed baselines as walk choosers: ``ladder``, ``big_ask`` and ``random`` (uniform
    over the eligible steps, its draws seeded by ``seed``, the user and the offer, so they never
    touch the user's own random stream). Their exact values are known; scored by a
    ``RegretMeter`` on a policy's own users (``simulation.rollout.Metered``) they give the
    paired comparison the exact values cannot: the same users, decision by decision."""
    catalog = world.catalog

    def eligible(state: UserState, u: SimUser) -> list[int]:
        return catalog.eligible_indices(state.accepted_mask, catalog.available(u.context))

    def ladder(state: UserState, u: SimUser) -> int | None:
        steps = eligible(state, u)
        return ladder_choice(catalog, steps) if steps else None

    def big_ask(state: UserState, u: SimUser) -> int | None:
        steps = eligible(state, u)
        return big_ask_choice(catalog, steps) if steps else None

    def uniform(state: UserState, u: SimUser) -> int | None:
        steps = eligible(state, u)
        if not steps:
            return None
        rng = np.random.default_rng([seed, zlib.crc32(u.user_id.encode()), u.n_offers])
        return steps[int(rng.integers(len(steps)))]

    return {"ladder": ladder, "big_ask": big_ask, "random": uniform}


def paired_gap(a: RegretMeter, b: RegretMeter) -> tuple[float, float]:
    """Mean of ``a``'s regret minus ``b``'s over the users both walked, and its standard
    error."""
    users = sorted(a.per_user.keys() & b.per_user.keys())
    return _mean_se(np.array([a.per_user[k] - b.per_user[k] for k in users], dtype=np.float64))


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    if len(x) < 2:
        return (float(x.mean()) if len(x) else 0.0), 0.0
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x)))
