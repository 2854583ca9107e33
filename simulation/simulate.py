"""The funnel simulator: the instrument every decision of nextstep is measured with.

Dynamics (per hidden type, see ``simulation.worlds.UserType``): each offer is accepted with
probability sigmoid(base + momentum*min(accepts in a row, 3) - decline_penalty*min(declines in a
row, 3) + value_coef*value received - resistance*max(0, effort - largest effort given) -
fatigue*offers made). After a decline the user drops out with probability sigmoid(drop +
drop_gap*effort gap + drop_declines*declines in a row before); after an accept of a non-goal
they leave anyway with probability ``leave``. Accepting a goal converts and earns the goal's
reward (1 when goals carry no value, so values are conversion probabilities); after
``max_asks`` offers the user is gone.

Because the dynamics depend only on (accepted steps, accepts in a row, declines in a row, asks
used), values are computed *exactly* by dynamic programming over that state: the type-aware
optimum and the value of every fixed baseline. Monte Carlo must agree with them (a test).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from features.catalog import Catalog
from features.errors import NextstepError
from models.baselines import big_ask_choice, ladder_choice
from simulation.worlds import UserType, World, load_world

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
    _type_appeal: dict[str, tuple[UserType, list[float]]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.catalog = self.world.catalog
        # optional per-step ``appeal`` (catalog field, a logit added for every type): steps
        # alike in every attribute a model sees may still differ in how readily users take them
        self._appeal = [float(s.extra.get("appeal", 0.0)) for s in self.catalog]

    def appeal(self, t: UserType) -> list[float]:
        """Per-step logit for type ``t``: the catalog's ``appeal`` plus the type's own (a
        shifted world moves a step's readiness through the latter)."""
        hit = self._type_appeal.get(t.name)
        if hit is None or hit[0] is not t:  # a same-named type of another world is another type
            ids = self.catalog.ids
            hit = (
                t,
                [x + t.appeal.get(sid, 0.0) for x, sid in zip(self._appeal, ids, strict=True)],
            )
            self._type_appeal[t.name] = hit
        return hit[1]

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
        mask, ca, cd, asks = state
        gap = max(0.0, self.catalog.efforts[step] - self.max_effort(mask))
        logit = (
            t.base
            + t.momentum * min(ca, CAP)
            - t.decline_penalty * min(cd, CAP)
            + t.value_coef * self.value_received(mask)
            - t.resistance * gap
            - t.fatigue * asks
            + self.appeal(t)[step]
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


# A policy for the exact programme: state -> list of (step, probability). The exact programme
# evaluates policies that look only at the accepted steps (every policy that needs no model).
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
    """Exact expected goal value by backward induction, vectorised over the user's state.

    A user's state is (accepted non-goal steps, accepts in a row, declines in a row, offers
    made); an accepted goal ends the walk with the goal's reward (1 when goals carry no value,
    so the value is the conversion probability). Each level of offers made is one array of shape
    (2**non-goal steps, 4, 4) filled step by step with numpy, so a 16-step world with a 15-offer
    horizon is solved in seconds rather than hours of per-state recursion. The optimum's levels
    are kept: ``q_optimal`` reads them for the type-blind reference.
    """

    def __init__(self, world: World) -> None:
        if world.shift is not None:
            raise NextstepError(
                f"world {world.name} changes part-way (shift:): solve "
                "world.before_shift() or world.after_shift(), each stationary"
            )
        self.world = world
        self.dyn = Dynamics(world)
        cat = world.catalog
        self.horizon = world.max_asks
        self.rewards = np.asarray(cat.goal_rewards, dtype=np.float64)
        self.non_goals = [i for i in range(cat.n) if not self.dyn.is_goal(i)]
        n = len(self.non_goals)
        codes = np.arange(1 << n, dtype=np.int64)
        full = np.zeros(1 << n, dtype=np.int64)
        for b, i in enumerate(self.non_goals):
            full |= ((codes >> b) & 1) << i
        self.full = full  # compressed code -> the catalog's accepted mask
        self._code = {int(m): c for c, m in enumerate(full.tolist())}
        eff = np.asarray(cat.efforts, dtype=np.float64)
        val = np.asarray(cat.values, dtype=np.float64)
        bits = (full[:, None] >> np.arange(cat.n)) & 1
        self.max_effort = np.where(bits > 0, eff, 0.0).max(axis=1)
        self.value = (bits * val).sum(axis=1)
        req = np.asarray(cat.requires_mask, dtype=np.int64)
        met = (full[:, None] & req) == req
        self.eligible = (bits == 0) & met  # (codes, steps)
        # reachable codes: every accepted step had its prerequisites (others are never visited)
        self.closed = ~((bits > 0) & ~met).any(axis=1)
        self.n_accepted = bits.sum(axis=1)
        self.gap = np.maximum(0.0, eff[None, :] - self.max_effort[:, None])
        self._levels: dict[str, list[np.ndarray]] = {}
        # keyed by the policy itself (held, so its id is never reused by another policy)
        self._policy_values: dict[tuple[str, ExactPolicy], list[np.ndarray]] = {}

    # -- the programme ---------------------------------------------------------------------------
    def _q_level(
        self, t: UserType, asks: int, nxt: np.ndarray, s: int, rows: np.ndarray
    ) -> np.ndarray:
        """Q(state, s) at ``asks`` offers made, for the codes ``rows`` (every accepts and
        declines in a row): shape (rows, 4, 4)."""
        world = self.world
        ca = np.arange(CAP + 1, dtype=np.float64)
        up = np.minimum(np.arange(CAP + 1) + 1, CAP)
        gap = self.gap[rows, s]
        logit = (
            t.base
            + t.momentum * ca[None, :, None]
            - t.decline_penalty * ca[None, None, :]
            + (t.value_coef * self.value[rows] - t.resistance * gap - t.fatigue * asks)[
                :, None, None
            ]
            + self.dyn.appeal(t)[s]
        )
        p = 1.0 / (1.0 + np.exp(-logit))
        if self.dyn.is_goal(s):
            on_accept = np.full((len(rows), CAP + 1), self.rewards[s])
        else:
            nxt_code = rows | (1 << self.non_goals.index(s))
            on_accept = (1.0 - t.leave) * nxt[nxt_code][:, up, 0]
        drop_logit = t.drop + world.drop_gap * gap[:, None] + world.drop_declines * ca
        stay = 1.0 - 1.0 / (1.0 + np.exp(-drop_logit))
        on_decline = stay * nxt[rows][:, 0, up]
        return p * on_accept[:, :, None] + (1.0 - p) * on_decline[:, None, :]

    def _solve(self, t: UserType, pi: np.ndarray | None) -> list[np.ndarray]:
        """Value levels 0..horizon of the optimum (``pi`` None) or of a mask policy ``pi``."""
        shape = (len(self.full), CAP + 1, CAP + 1)
        levels = [np.zeros(shape) for _ in range(self.horizon + 1)]
        offered = (self.eligible if pi is None else pi > 0) & self.closed[:, None]
        rows_of = [np.flatnonzero(offered[:, s]) for s in range(self.world.catalog.n)]
        for asks in range(self.horizon - 1, -1, -1):
            nxt = levels[asks + 1]
            v = np.full(shape, -np.inf) if pi is None else np.zeros(shape)
            for s, all_rows in enumerate(rows_of):
                rows = all_rows[self.n_accepted[all_rows] <= asks]  # no more accepts than asks
                if len(rows) == 0:
                    continue
                q = self._q_level(t, asks, nxt, s, rows)
                if pi is None:
                    v[rows] = np.maximum(v[rows], q)
                else:
                    v[rows] += pi[rows, s, None, None] * q
            v[~np.isfinite(v)] = 0.0  # nothing eligible: the walk ends with nothing
            levels[asks] = v
        return levels

    def _lookup(self, levels: list[np.ndarray]) -> Callable[[SimState], float]:
        def v(state: SimState) -> float:
            mask, ca, cd, asks = state
            if asks >= self.horizon or mask & self.world.catalog.goal_mask:
                return 0.0
            return float(levels[asks][self._code[mask], ca, cd])

        return v

    def optimal_value_fn(self, t: UserType) -> Callable[[SimState], float]:
        if t.name not in self._levels:
            self._levels[t.name] = self._solve(t, None)
        return self._lookup(self._levels[t.name])

    def policy_matrix(self, policy: ExactPolicy) -> np.ndarray:
        """The policy's step probabilities for every accepted-steps code, (codes, steps)."""
        cat = self.world.catalog
        pi = np.zeros((len(self.full), cat.n))
        for code, mask in enumerate(self.full.tolist()):
            eligible = np.flatnonzero(self.eligible[code]).tolist()
            if eligible:
                for s, prob in policy(cat, (mask, 0, 0, 0), eligible):
                    pi[code, s] += prob
        return pi

    def policy_value_fn(self, t: UserType, policy: ExactPolicy) -> Callable[[SimState], float]:
        key = (t.name, policy)
        if key not in self._policy_values:
            self._policy_values[key] = self._solve(t, self.policy_matrix(policy))
        return self._lookup(self._policy_values[key])

    def q_values(
        self, t: UserType, state: SimState, value: Callable[[SimState], float]
    ) -> dict[int, float]:
        """Q(state, step) for every eligible step, given the value of the next states."""
        dyn = self.dyn
        out: dict[int, float] = {}
        for s in self.world.catalog.eligible_indices(state[0]):
            p = dyn.p_accept(t, state, s)
            if dyn.is_goal(s):
                on_accept = float(self.rewards[s])
            else:
                on_accept = (1.0 - t.leave) * value(dyn.after_accept(state, s))
            on_decline = (1.0 - dyn.p_drop(t, state, s)) * value(dyn.after_decline(state))
            out[s] = p * on_accept + (1.0 - p) * on_decline
        return out

    def q_optimal(self, t: UserType, state: SimState) -> dict[int, float]:
        return self.q_values(t, state, self.optimal_value_fn(t))

    def table(self) -> dict[str, Any]:
        """Exact value of the type-aware optimum and each fixed policy (overall, per type)."""
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
    reward: float = 0.0  # the worth of the goal reached (1 when goals carry no value)
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
                self.reward = float(self.world.catalog.goal_rewards[step])
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


def make_user(
    world: World,
    dyn: Dynamics,
    seed: int,
    i: int,
    prefix: str = "u",
    *,
    slot: tuple[int, int] | None = None,
) -> SimUser:
    """User ``i`` of a seeded population: its own RNG stream, so order never matters.

    The arrival time is uniform over the simulated period; with ``slot`` = (position, users)
    it is uniform within the position's share of it instead, so arrival order is time order
    (how a world with a shift makes "halfway" the same in both).
    """
    rng = np.random.default_rng([seed, i])
    ti = int(rng.choice(len(world.types), p=world.weights))
    t = world.types[ti]
    channel = _draw(rng, t.channel)
    device = _draw(rng, t.device)
    offset = float(rng.uniform(0, SPREAD_DAYS * 86400.0))
    if slot is not None:
        offset = (slot[0] * SPREAD_DAYS * 86400.0 + offset) / slot[1]
    ts = round(T0 + offset)
    return SimUser(
        world, dyn, rng, f"{prefix}{seed}_{i:06d}", ti, {"channel": channel, "device": device}, ts
    )


class Population:
    """The ``users`` users of one run in arrival order, each meeting the world of its time.

    Without a shift every user meets ``world`` (exactly as ``make_user`` draws them). With one,
    users arrive in order over the simulated period and those from ``first_shifted`` on meet
    ``world.after_shift()``: their type is drawn from its weights and they answer with its
    readiness. Simulated logs, Monte Carlo and rollouts (in process and over HTTP) all draw
    their users here, so they agree on who met which world.
    """

    def __init__(self, world: World, users: int) -> None:
        self.world = world
        self.users = users
        self.before = world.before_shift()
        self.after = world.after_shift()
        self.first_shifted = users if world.shift is None else world.shift.first_shifted(users)
        dyn = Dynamics(self.before)
        self._dyn = (dyn, dyn if world.shift is None else Dynamics(self.after))

    def shifted(self, i: int) -> bool:
        """Whether the ``i``-th arrival meets the shifted world."""
        return i >= self.first_shifted

    def user(self, seed: int, i: int, prefix: str = "u") -> SimUser:
        post = self.shifted(i)
        slot = None if self.world.shift is None else (i, self.users)
        w = self.after if post else self.before
        return make_user(w, self._dyn[post], seed, i, prefix, slot=slot)


def _draw(rng: np.random.Generator, dist: dict[str, float]) -> str:
    keys = list(dist)
    return keys[int(rng.choice(len(keys), p=[dist[k] for k in keys]))]


def logging_distribution(world: World, eligible: list[int]) -> dict[int, float]:
    """The exploring incumbent: uniform with prob ``logging_uniform``, else its base rule."""
    if world.logging_base == "random":
        return {s: 1.0 / len(eligible) for s in eligible}
    eps = world.logging_uniform
    probs = {s: eps / len(eligible) for s in eligible}
    choose = big_ask_choice if world.logging_base == "big_ask" else ladder_choice
    probs[choose(world.catalog, eligible)] += 1.0 - eps
    return probs


def generate_log(
    world: World, users: int, seed: int, *, with_truth: bool = False
) -> dict[str, list]:
    """Event rows (column lists) of ``users`` users under the logging policy.

    With ``with_truth`` the rows also carry the hidden type and the true probability of accept
    (for measuring models against the best AUC any model could reach; never in ``events.csv``).
    """
    population = Population(world, users)
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
        u = population.user(seed, i)
        dyn = u.dyn
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
    """Expected goal value (conversion when goals carry no value) and its standard error."""
    population = Population(world, users)
    conv = np.zeros(users)
    for i in range(users):
        u = population.user(seed, i)
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
        conv[i] = u.reward
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
            conv[i] = u.reward
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
    # with --exact, stdout is the JSON table alone (pipe it to jq); the summary goes to stderr
    print(
        f"wrote {info['rows']} events of {users} users ({w.name}) to {out}/events.csv",
        file=sys.stderr if exact else sys.stdout,
    )
    if exact:
        import json

        print(json.dumps(exact_table(w), indent=2))


def exact_table(world: World) -> dict[str, Any]:
    """The exact table of the world its first users meet; a world with a shift adds the table
    of the world after it under ``after_shift``."""
    table = ExactSolver(world.before_shift()).table()
    if world.shift is not None:
        table["after_shift"] = ExactSolver(world.after_shift()).table()
    return table
