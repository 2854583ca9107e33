"""The funnel simulator: the instrument every decision of nextstep is measured with.

Dynamics (per hidden type, see ``training.worlds.UserType``): each offer is accepted with
probability sigmoid(base + momentum*min(accepts in a row, 3) - decline_penalty*min(declines in a
row, 3) + value_coef*value received - resistance*max(0, effort - largest effort given)). After a
decline the user drops out with probability sigmoid(drop + drop_gap*effort gap +
drop_declines*declines in a row before); after an accept of a non-goal they leave anyway with
probability ``leave``. Accepting a goal converts; after ``max_asks`` offers the user is gone.

Because the dynamics depend only on (accepted steps, accepts in a row, declines in a row, asks
used), values are computed *exactly* by dynamic programming over that state: the type-aware
optimum and the value of every fixed baseline. Monte Carlo must agree with them (a test).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from features.catalog import Catalog
from models.baselines import big_ask_choice, ladder_choice
from training.worlds import UserType, World, load_world

CAP = 3  # momentum and decline penalties saturate after three in a row
T0 = 1_735_689_600.0  # 2025-01-01T00:00:00Z: simulated logs start here
SPREAD_DAYS = 60.0

SimState = tuple[int, int, int, int]  # (accepted mask, accepts in a row, declines in a row, asks)
START: SimState = (0, 0, 0, 0)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@dataclass
class Dynamics:
    """True transition probabilities of one world, per type (cached: states repeat a lot)."""

    world: World
    catalog: Catalog = field(init=False)
    _value: list[float] = field(init=False)
    _maxeff: dict[int, float] = field(init=False, default_factory=dict)
    _appeal: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self.catalog = self.world.catalog
        # optional per-step ``appeal`` (catalog field, a logit added for every type): steps
        # alike in every attribute a model sees may still differ in how readily users take them
        self._appeal = [float(s.extra.get("appeal", 0.0)) for s in self.catalog]

    def max_effort(self, mask: int) -> float:
        m = self._maxeff.get(mask)
        if m is None:
            m = max(
                (self.catalog.efforts[i] for i in range(self.catalog.n) if mask >> i & 1),
                default=0.0,
            )
            self._maxeff[mask] = m
        return m

    def value_received(self, mask: int) -> float:
        return sum(self.catalog.values[i] for i in range(self.catalog.n) if mask >> i & 1)

    def p_accept(self, t: UserType, state: SimState, step: int) -> float:
        mask, ca, cd, _ = state
        gap = max(0.0, self.catalog.efforts[step] - self.max_effort(mask))
        logit = (
            t.base
            + t.momentum * min(ca, CAP)
            - t.decline_penalty * min(cd, CAP)
            + t.value_coef * self.value_received(mask)
            - t.resistance * gap
            + self._appeal[step]
        )
        return _sigmoid(logit)

    def p_drop(self, t: UserType, state: SimState, step: int) -> float:
        mask, _, cd, _ = state
        gap = max(0.0, self.catalog.efforts[step] - self.max_effort(mask))
        return _sigmoid(
            t.drop + self.world.drop_gap * gap + self.world.drop_declines * min(cd, CAP)
        )

    def after_accept(self, state: SimState, step: int) -> SimState:
        mask, ca, _, asks = state
        return (mask | 1 << step, min(ca + 1, CAP), 0, asks + 1)

    def after_decline(self, state: SimState) -> SimState:
        mask, _, cd, asks = state
        return (mask, 0, min(cd + 1, CAP), asks + 1)

    def is_goal(self, step: int) -> bool:
        return bool(self.catalog.goal_mask >> step & 1)


# A policy for the exact programme: state -> list of (step, probability).
ExactPolicy = Callable[[Catalog, SimState, list[int]], list[tuple[int, float]]]


def ladder_policy(
    catalog: Catalog, state: SimState, eligible: list[int]
) -> list[tuple[int, float]]:
    return [(ladder_choice(catalog, eligible), 1.0)]


def big_ask_policy(
    catalog: Catalog, state: SimState, eligible: list[int]
) -> list[tuple[int, float]]:
    return [(big_ask_choice(catalog, eligible), 1.0)]


def random_policy(
    catalog: Catalog, state: SimState, eligible: list[int]
) -> list[tuple[int, float]]:
    p = 1.0 / len(eligible)
    return [(s, p) for s in eligible]


FIXED_POLICIES: dict[str, ExactPolicy] = {
    "ladder": ladder_policy,
    "big_ask": big_ask_policy,
    "random": random_policy,
}


class ExactSolver:
    """Exact conversion probabilities by dynamic programming, one type at a time."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.dyn = Dynamics(world)
        self._opt: dict[str, Callable[[SimState], float]] = {}

    def q_values(
        self, t: UserType, state: SimState, value: Callable[[SimState], float]
    ) -> dict[int, float]:
        """Q(state, step) for every eligible step, given the value of the next states."""
        dyn = self.dyn
        out: dict[int, float] = {}
        for s in self.world.catalog.eligible_indices(state[0]):
            p = dyn.p_accept(t, state, s)
            if dyn.is_goal(s):
                on_accept = 1.0
            else:
                on_accept = (1.0 - t.leave) * value(dyn.after_accept(state, s))
            on_decline = (1.0 - dyn.p_drop(t, state, s)) * value(dyn.after_decline(state))
            out[s] = p * on_accept + (1.0 - p) * on_decline
        return out

    def optimal_value_fn(self, t: UserType) -> Callable[[SimState], float]:
        if t.name in self._opt:
            return self._opt[t.name]

        @cache
        def v(state: SimState) -> float:
            if state[3] >= self.world.max_asks:
                return 0.0
            q = self.q_values(t, state, v)
            return max(q.values(), default=0.0)

        self._opt[t.name] = v
        return v

    def q_optimal(self, t: UserType, state: SimState) -> dict[int, float]:
        return self.q_values(t, state, self.optimal_value_fn(t))

    def policy_value_fn(self, t: UserType, policy: ExactPolicy) -> Callable[[SimState], float]:
        catalog = self.world.catalog

        @cache
        def v(state: SimState) -> float:
            if state[3] >= self.world.max_asks:
                return 0.0
            eligible = catalog.eligible_indices(state[0])
            if not eligible:
                return 0.0
            q = self.q_values_for(t, state, v, [s for s, _ in policy(catalog, state, eligible)])
            return sum(prob * q[s] for s, prob in policy(catalog, state, eligible))

        return v

    def q_values_for(
        self, t: UserType, state: SimState, value: Callable[[SimState], float], steps: Sequence[int]
    ) -> dict[int, float]:
        dyn = self.dyn
        out: dict[int, float] = {}
        for s in steps:
            p = dyn.p_accept(t, state, s)
            on_accept = (
                1.0 if dyn.is_goal(s) else (1.0 - t.leave) * value(dyn.after_accept(state, s))
            )
            on_decline = (1.0 - dyn.p_drop(t, state, s)) * value(dyn.after_decline(state))
            out[s] = p * on_accept + (1.0 - p) * on_decline
        return out

    def table(self) -> dict[str, Any]:
        """Exact conversion of the type-aware optimum and each fixed policy (overall, per type)."""
        rows: dict[str, dict[str, float]] = {"optimum": {}}
        for name in FIXED_POLICIES:
            rows[name] = {}
        for t in self.world.types:
            rows["optimum"][t.name] = self.optimal_value_fn(t)(START)
            for name, pol in FIXED_POLICIES.items():
                rows[name][t.name] = self.policy_value_fn(t, pol)(START)
        w = dict(zip([t.name for t in self.world.types], self.world.weights, strict=True))
        return {
            name: {"overall": sum(w[k] * v for k, v in per.items()), "per_type": per}
            for name, per in rows.items()
        }


# ---------------------------------------------------------------------------------------------
# Monte Carlo users


@dataclass
class SimUser:
    """One simulated user walking through the funnel (hidden type, visible context)."""

    world: World
    dyn: Dynamics
    rng: np.random.Generator
    user_id: str
    type_index: int
    context: dict[str, str]
    ts: float
    state: SimState = START
    done: bool = False
    converted: bool = False
    n_offers: int = 0

    @property
    def type(self) -> UserType:
        return self.world.types[self.type_index]

    def respond(self, step: int) -> str:
        """The outcome of offering ``step`` now; advances the user's hidden state and clock."""
        t = self.type
        dyn = self.dyn
        self.n_offers += 1
        if self.rng.random() < dyn.p_accept(t, self.state, step):
            outcome = "accepted"
            self.state = dyn.after_accept(self.state, step)
            if dyn.is_goal(step):
                self.converted = self.done = True
            elif self.rng.random() < t.leave:
                self.done = True
        else:
            dropped = self.rng.random() < dyn.p_drop(t, self.state, step)
            outcome = "dropped" if dropped else "declined"
            self.state = dyn.after_decline(self.state)
            self.done = dropped
        if self.state[3] >= self.world.max_asks:
            self.done = True
        return outcome

    def advance_clock(self) -> None:
        """Time until the next visit: exponential with the type's mean gap (at least a minute)."""
        self.ts += max(60.0, float(self.rng.exponential(self.type.gap_hours * 3600.0)))
        self.ts = round(self.ts)

    def stop_if_no_eligible(self) -> None:
        if not self.world.catalog.eligible_indices(self.state[0], self.available):
            self.done = True

    @property
    def available(self) -> int:
        """The catalog's ``available_when`` mask for this user's context."""
        return self.world.catalog.available(self.context)


def make_user(world: World, dyn: Dynamics, seed: int, i: int, prefix: str = "u") -> SimUser:
    """User ``i`` of a seeded population: its own RNG stream, so order never matters."""
    rng = np.random.default_rng([seed, i])
    ti = int(rng.choice(len(world.types), p=world.weights))
    t = world.types[ti]
    channel = _draw(rng, t.channel)
    device = _draw(rng, t.device)
    ts = round(T0 + float(rng.uniform(0, SPREAD_DAYS * 86400.0)))
    return SimUser(
        world, dyn, rng, f"{prefix}{seed}_{i:06d}", ti, {"channel": channel, "device": device}, ts
    )


def _draw(rng: np.random.Generator, dist: dict[str, float]) -> str:
    keys = list(dist)
    return keys[int(rng.choice(len(keys), p=[dist[k] for k in keys]))]


def logging_distribution(world: World, eligible: list[int]) -> dict[int, float]:
    """The exploring logging policy: uniform with prob ``logging_uniform``, else ladder."""
    eps = world.logging_uniform
    probs = {s: eps / len(eligible) for s in eligible}
    lad = ladder_choice(world.catalog, eligible)
    probs[lad] += 1.0 - eps
    return probs


def generate_log(
    world: World, users: int, seed: int, *, with_truth: bool = False
) -> dict[str, list]:
    """Event rows (column lists) of ``users`` users under the logging policy.

    With ``with_truth`` the rows also carry the hidden type and the true probability of accept
    (for measuring models against the best AUC any model could reach; never in ``events.csv``).
    """
    dyn = Dynamics(world)
    catalog = world.catalog
    cols: dict[str, list] = {
        k: []
        for k in (
            "user_id",
            "ts",
            "step",
            "outcome",
            "propensity",
            "policy",
            "decision_id",
            "channel",
            "device",
        )
    }
    if with_truth:
        cols["true_p_accept"] = []
        cols["user_type"] = []
    for i in range(users):
        u = make_user(world, dyn, seed, i)
        n = 0
        while not u.done:
            eligible = catalog.eligible_indices(u.state[0], u.available)
            if not eligible:
                break
            probs = logging_distribution(world, eligible)
            steps = list(probs)
            k = int(u.rng.choice(len(steps), p=[probs[s] for s in steps]))
            step = steps[k]
            if with_truth:
                cols["true_p_accept"].append(dyn.p_accept(u.type, u.state, step))
                cols["user_type"].append(u.type.name)
            outcome = u.respond(step)
            cols["user_id"].append(u.user_id)
            cols["ts"].append(u.ts)
            cols["step"].append(catalog.ids[step])
            cols["outcome"].append(outcome)
            cols["propensity"].append(round(probs[step], 12))
            cols["policy"].append("logging")
            cols["decision_id"].append(f"{u.user_id}-{n}")
            cols["channel"].append(u.context["channel"])
            cols["device"].append(u.context["device"])
            n += 1
            u.advance_clock()
    return cols


def monte_carlo(world: World, policy: ExactPolicy, users: int, seed: int) -> tuple[float, float]:
    """Conversion and its standard error of a fixed policy, by simulation."""
    dyn = Dynamics(world)
    conv = np.zeros(users)
    for i in range(users):
        u = make_user(world, dyn, seed, i)
        while not u.done:
            eligible = world.catalog.eligible_indices(u.state[0], u.available)
            if not eligible:
                break
            choice = policy(world.catalog, u.state, eligible)
            if len(choice) == 1:
                step = choice[0][0]
            else:
                k = int(u.rng.choice(len(choice), p=[p for _, p in choice]))
                step = choice[k][0]
            u.respond(step)
        conv[i] = u.converted
    return float(conv.mean()), float(conv.std(ddof=1) / math.sqrt(users))


# ---------------------------------------------------------------------------------------------
# The type-blind reference: knows the dynamics, not the type.


class TypeBlindReference:
    """Bayesian posterior over types from context, outcomes and return gaps; acts on the mixture.

    Picks argmax_s sum_type posterior(type) * Q_type(state, s). This is the reachable reference
    for a learned planner (which never sees the type either).
    """

    def __init__(self, world: World, solver: ExactSolver | None = None) -> None:
        self.world = world
        self.solver = solver or ExactSolver(world)
        self.dyn = self.solver.dyn

    def prior(self, context: dict[str, str]) -> np.ndarray:
        w = np.array(self.world.weights)
        for key in ("channel", "device"):
            if key in context:
                w = w * np.array(
                    [getattr(t, key).get(context[key], 1e-9) for t in self.world.types]
                )
        return w / w.sum()

    def update(
        self, post: np.ndarray, state: SimState, step: int, outcome: str, gap_hours: float | None
    ) -> np.ndarray:
        """Posterior after seeing ``outcome`` of ``step`` in ``state`` and, if the user came back,
        the gap until they did."""
        like = np.empty(len(self.world.types))
        for k, t in enumerate(self.world.types):
            p = self.dyn.p_accept(t, state, step)
            if outcome == "accepted":
                lk = p * ((1.0 - t.leave) if gap_hours is not None else 1.0)
            else:
                lk = (1.0 - p) * (1.0 - self.dyn.p_drop(t, state, step))
            if gap_hours is not None:
                rate = 1.0 / t.gap_hours
                lk *= rate * math.exp(-rate * gap_hours)
            like[k] = lk
        post = post * like
        s = post.sum()
        return post / s if s > 0 else np.array(self.world.weights)

    def choose(self, post: np.ndarray, state: SimState) -> int | None:
        eligible = self.world.catalog.eligible_indices(state[0])
        if not eligible:
            return None
        total = dict.fromkeys(eligible, 0.0)
        for k, t in enumerate(self.world.types):
            if post[k] < 1e-6:
                continue
            for s, q in self.solver.q_optimal(t, state).items():
                total[s] += post[k] * q
        return max(eligible, key=lambda s: (total[s], -self.world.catalog.efforts[s]))

    def monte_carlo(self, users: int, seed: int) -> tuple[float, float]:
        dyn = self.dyn
        conv = np.zeros(users)
        for i in range(users):
            u = make_user(self.world, dyn, seed, i)
            post = self.prior(u.context)
            while not u.done:
                step = self.choose(post, u.state)
                if step is None:
                    break
                before = u.state
                outcome = u.respond(step)
                if u.done:
                    break
                ts0 = u.ts
                u.advance_clock()
                post = self.update(post, before, step, outcome, (u.ts - ts0) / 3600.0)
            conv[i] = u.converted
        return float(conv.mean()), float(conv.std(ddof=1) / math.sqrt(users))


# ---------------------------------------------------------------------------------------------
# CLI


def write_simulation(world: World, users: int, seed: int, out: Path) -> dict[str, Any]:
    """Write ``events.csv`` and ``catalog.yaml`` (deterministic bytes for a given seed)."""
    import pandas as pd
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    cols = generate_log(world, users, seed)
    frame = pd.DataFrame(cols)
    frame["ts"] = pd.to_datetime(frame["ts"], unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    frame.to_csv(out / "events.csv", index=False, lineterminator="\n")
    (out / "catalog.yaml").write_text(
        yaml.safe_dump({"steps": world.catalog.to_list()}, sort_keys=False), encoding="utf-8"
    )
    return {"rows": len(frame), "users": users, "world": world.name}


def simulate_command(world: str, users: int, seed: int, out: Path, exact: bool) -> None:
    w = load_world(world)
    info = write_simulation(w, users, seed, out)
    print(f"wrote {info['rows']} events of {users} users ({w.name}) to {out}/events.csv")
    if exact:
        import json

        print(json.dumps(ExactSolver(w).table(), indent=2))
