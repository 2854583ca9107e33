"""The look-ahead is exact arithmetic: given the true outcome models, its value is the truth.

In a tiny world of one user type (so type-blind and type-aware are the same) and a horizon of
three asks, the planner is handed an oracle scorer: P(accept), P(drop | decline) and P(comes
back | accept) computed from each feature row with the world's own formulas. Expanded as deep
as the horizon, its tree then is the exact programme: every candidate's value equals
``ExactSolver``'s optimal Q, and the policy it follows converts, in Monte Carlo, what its own
root value says. The learned models only ever add estimation error on top of this.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from features.state import CANDIDATE_FEATURES, STATE_FEATURES, UserState
from models.bundle import ModelScorer
from models.planner import Planner
from simulation.rollout import walk_user
from simulation.simulate import CAP, START, Dynamics, ExactSolver, make_user
from simulation.synthetic import simulated_bundle
from simulation.worlds import World

_COL = {name: i for i, name in enumerate((*STATE_FEATURES, *CANDIDATE_FEATURES))}
_STEP_COLUMNS = [_COL[c] for c in ("effort", "stage", "value", "is_goal")]


def _attributes(catalog) -> list[tuple[float, ...]]:
    """Per step, what a feature row says about it (there is no ``step_id`` column by default)."""
    arr = catalog.arrays
    rows = np.column_stack([arr[c] for c in ("effort", "stage", "value", "is_goal")])
    return [tuple(map(float, r)) for r in rows]


class OracleScorer:
    """A ``ModelScorer`` whose three probabilities are the world's true ones for its only type.

    Everything else (feature spec, split thresholds for the cache key, typical gap) is a real
    scorer's, so the planner builds exactly the rows it builds in production; only the numbers
    the rows are turned into are the truth instead of an estimate.
    """

    def __init__(self, world: World, real: ModelScorer) -> None:
        self.world = world
        self.real = real
        self.type = world.types[0]
        self.dyn = Dynamics(world)
        self.step_of = {a: i for i, a in enumerate(_attributes(world.catalog))}
        self.appeal = np.asarray(self.dyn.appeal(self.type))

    def __getattr__(self, name: str):  # spec, bundle, split_lists, split_arrays, ...
        return getattr(self.real, name)

    def _parts(self, X: np.ndarray) -> tuple[np.ndarray, ...]:
        asks = X[:, _COL["n_asks"]]
        gap = np.maximum(0.0, X[:, _COL["effort_gap"]])
        cd = np.minimum(X[:, _COL["cons_declines"]], CAP)
        return asks, gap, cd

    def p_accept_rows(self, X: np.ndarray) -> np.ndarray:
        t = self.type
        asks, gap, cd = self._parts(X)
        step = np.array([self.step_of[tuple(map(float, r))] for r in X[:, _STEP_COLUMNS]])
        logit = (
            t.base
            + t.momentum * np.minimum(X[:, _COL["cons_accepts"]], CAP)
            - t.decline_penalty * cd
            + t.value_coef * X[:, _COL["value_received"]]
            - t.resistance * gap
            - t.fatigue * asks
            + self.appeal[step]
        )
        return 1.0 / (1.0 + np.exp(-logit))

    def p_drop_rows(self, X: np.ndarray) -> np.ndarray:
        asks, gap, cd = self._parts(X)
        w = self.world
        p = 1.0 / (1.0 + np.exp(-(self.type.drop + w.drop_gap * gap + w.drop_declines * cd)))
        return np.where(asks + 1 >= w.max_asks, 1.0, p)  # the last ask: the user is done

    def p_back_rows(self, X: np.ndarray) -> np.ndarray:
        asks = X[:, _COL["n_asks"]]
        return np.where(asks + 1 >= self.world.max_asks, 0.0, 1.0 - self.type.leave)


@pytest.fixture(scope="module")
def setting(tiny_world: World) -> tuple[World, OracleScorer]:
    world = tiny_world
    real = ModelScorer(
        simulated_bundle(world, 400, 3, params={"n_estimators": 10}, n_jobs=1), world.catalog
    )
    return world, OracleScorer(world, real)


def _exact_planner(oracle: OracleScorer) -> Planner:
    """As deep as the horizon, with no "as good" tolerance and no discount for trusting the
    models less the further they look (these models are the truth): the expectimax itself."""
    planner = Planner(
        depth=oracle.world.max_asks, relative_tolerance=0.0, discount=1.0, value_weight=0.0
    )
    return planner.bind(oracle, oracle.world.catalog)


def test_every_root_value_is_the_exact_optimal_q(setting) -> None:
    world, oracle = setting
    cat = world.catalog
    exact = ExactSolver(world).q_optimal(world.types[0], START)
    user = make_user(world, oracle.dyn, 1, 0)
    eligible = cat.eligible_indices(0, cat.available(user.context))
    q, _ = _exact_planner(oracle).q_values(
        UserState(), eligible, user.ts, user.context, oracle, cat
    )
    assert sorted(exact) == sorted(eligible)
    for i, step in enumerate(eligible):
        assert q[i] == pytest.approx(exact[step], rel=1e-9, abs=1e-12), cat.steps[step].id


def test_the_planners_own_policy_converts_what_its_root_value_says(setting) -> None:
    world, oracle = setting
    cat = world.catalog
    planner = _exact_planner(oracle)
    roots: list[float] = []

    def choose(state: UserState, u) -> int | None:
        eligible = cat.eligible_indices(state.accepted_mask, cat.available(u.context))
        if not eligible:
            return None
        q, _ = planner.q_values(state, eligible, u.ts, u.context, oracle, cat)
        if state.n_asks == 0:
            roots.append(float(q.max()))
        return eligible[int(np.argmax(q))]

    users = 3000
    rewards = []
    for i in range(users):
        u = make_user(world, oracle.dyn, 17, i)
        _, invalid = walk_user(world, u, choose)
        assert invalid == 0
        rewards.append(u.reward)
    value = float(np.mean(roots))  # one type: every root value is the same number
    assert max(roots) - min(roots) < 1e-12
    optimum = ExactSolver(world).table()["optimum"]["overall"]
    assert value == pytest.approx(optimum, rel=1e-9)
    mean = float(np.mean(rewards))
    se = float(np.std(rewards)) / math.sqrt(users)
    assert se > 0 and abs(mean - value) <= 3 * se, (mean, value, se)
