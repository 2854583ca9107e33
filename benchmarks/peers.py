"""The recipes a user could set up in an afternoon on the same logs: the planner's peers.

The planner's claim is not "better than a fixed rule" only, but better than what a capable team
would build themselves from the same event log. Three such recipes, each fitted on exactly the
log and features the planner's models see:

* ``bandit``: a one-step contextual bandit, greedy on P(accept) of any step (the served
  ``greedy`` policy on the same readiness model);
* ``greedy_value``: greedy on P(accept) x goal value (ask for the goal that pays most in
  expectation now; with no goal eligible, the step most likely to be accepted);
* ``conversion_model``: a LightGBM model of the value the user eventually reached after each
  logged offer (P(eventual conversion | state, step) when goals carry no value), taken greedily.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.catalog import Catalog
from features.offline import build_offline_features
from features.state import UserState
from models.bundle import ModelScorer
from simulation.rollout import walk_user
from simulation.simulate import SimUser
from simulation.worlds import World

# (state, eligible steps, now, context) -> the step to offer
Chooser = Callable[[UserState, list[int], float, Mapping[str, Any]], int]


def greedy_value(scorer: ModelScorer, catalog: Catalog) -> Chooser:
    rewards = np.asarray(catalog.goal_rewards)

    def choose(state: UserState, eligible: list[int], now: float, ctx: Mapping[str, Any]) -> int:
        p = scorer.p_accept(state, eligible, now, ctx)
        worth = p * rewards[eligible]
        return eligible[int(np.argmax(worth))] if worth.max() > 0 else eligible[int(np.argmax(p))]

    return choose


def conversion_model(
    frame: pd.DataFrame, catalog: Catalog, scorer: ModelScorer, *, seed: int
) -> Chooser:
    """Fit P(eventual value | state, step) on the log's point-in-time rows; choose its argmax."""
    spec = scorer.spec
    off = build_offline_features(frame, catalog, spec)
    goal_reward = np.asarray(catalog.goal_rewards)[off.step_index]
    won = np.where(off.accepted, goal_reward, 0.0)
    per_user = pd.Series(won).groupby(frame["user_id"].to_numpy()).transform("max").to_numpy()
    model = lgb.LGBMRegressor(
        n_estimators=200,
        learning_rate=0.05,
        num_leaves=31,
        min_child_samples=20,
        random_state=seed,
        n_jobs=1,
        verbose=-1,
    )
    model.fit(off.X, per_user, categorical_feature=list(spec.categorical_indices))
    booster = model.booster_

    def choose(state: UserState, eligible: list[int], now: float, ctx: Mapping[str, Any]) -> int:
        value = booster.predict(scorer.matrix(state, eligible, now, ctx, catalog))
        return eligible[int(np.argmax(value))]

    return choose


class PeerWalk:
    """Walk one simulated user with a peer's chooser (the rollout's step function protocol)."""

    concurrency = 1

    def __init__(self, world: World, chooser: Chooser) -> None:
        self.world = world
        self.chooser = chooser

    def choose(self, state: UserState, u: SimUser) -> int | None:
        """The peer's step for this user now (``walk_user``'s chooser)."""
        cat = self.world.catalog
        eligible = cat.eligible_indices(state.accepted_mask, cat.available(u.context))
        return self.chooser(state, eligible, u.ts, u.context) if eligible else None

    def __call__(self, u: SimUser) -> tuple[int, int, int, list[str]]:
        offers, invalid = walk_user(self.world, u, self.choose)
        return offers, invalid, 0, []
