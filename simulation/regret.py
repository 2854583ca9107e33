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
import zlib
from collections.abc import Callable

import numpy as np

from features.state import UserState
from models.baselines import big_ask_choice, ladder_choice
from simulation.rollout import walk_user
from simulation.simulate import SimState, SimUser, TypeBlindReference
from simulation.worlds import World

# (folded state, user) -> the step to offer, or None: a walk's chooser (``walk_user``)
Choose = Callable[[UserState, SimUser], "int | None"]


class RegretMeter:
    """A rollout step function (``run_users``) that walks each user with ``choose`` and keeps
    the regret of every user's decisions in ``per_user`` (in goal-worth units, run order).
    ``belief`` is the current user's posterior over the world's types."""

    concurrency = 1  # the per-user list is appended in walk order

    def __init__(
        self, world: World, choose: Choose, reference: TypeBlindReference | None = None
    ) -> None:
        self.world = world
        self.choose = choose
        self.reference = reference or TypeBlindReference(world)
        self.per_user: list[float] = []
        self.belief = np.asarray(world.weights, dtype=np.float64)

    def __call__(self, u: SimUser) -> tuple[int, int, int, list[str]]:
        ref = self.reference
        catalog = self.world.catalog
        available = catalog.available(u.context)
        self.belief = ref.prior(u.context)
        regret = 0.0

        def charged(state: UserState, user: SimUser) -> int | None:
            nonlocal regret
            step = self.choose(state, user)
            eligible = catalog.eligible_indices(user.state[0], available)
            if step is not None and step in eligible:
                q = self.belief_q(user.state, eligible)
                regret += float(q.max() - q[eligible.index(step)])
            return step

        def observe(before: SimState, step: int, outcome: str, gap_hours: float) -> None:
            self.belief = ref.update(self.belief, before, step, outcome, gap_hours)

        offers, invalid = walk_user(self.world, u, charged, observe=observe)
        self.per_user.append(regret)
        return offers, invalid, 0, []

    def belief_q(self, state: SimState, eligible: list[int]) -> np.ndarray:
        """Each eligible step's optimal Q in ``state``, averaged over the types by the current
        user's ``belief``."""
        ref = self.reference
        belief = self.belief
        q = np.zeros(len(eligible))
        for k, t in enumerate(self.world.types):
            if belief[k] < 1e-6:
                continue
            values = ref.solver.q_optimal(t, state)
            q += belief[k] * np.array([values[s] for s in eligible])
        return q

    def summary(self) -> tuple[float, float]:
        """Mean regret per user and its standard error."""
        x = np.asarray(self.per_user, dtype=np.float64)
        if len(x) < 2:
            return float(x.mean()) if len(x) else 0.0, 0.0
        return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x)))


def fixed_rule_choosers(world: World, seed: int) -> dict[str, Choose]:
    """The fixed baselines as walk choosers: ``ladder``, ``big_ask`` and ``random`` (uniform
    over the eligible steps, its draws seeded by ``seed``, the user and the offer, so they never
    touch the user's own random stream). Their exact values are known; walked through a
    ``RegretMeter`` on a policy's users they give the paired comparison the exact values cannot:
    the same users, decision by decision."""
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
    """Mean of ``a``'s regret minus ``b``'s over the same users, and its standard error."""
    d = np.asarray(a.per_user, dtype=np.float64) - np.asarray(b.per_user, dtype=np.float64)
    if len(d) < 2:
        return float(d.mean()) if len(d) else 0.0, 0.0
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))
