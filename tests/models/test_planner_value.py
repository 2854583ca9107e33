"""The planner's value of a state against the exact value of its own policy, in a tiny world.

The look-ahead values a first visit by what the learned models say the user's future is worth.
In a world small enough that the models can be learned well (one kind of user, two steps, three
offers), that value must be what the planner's own policy then earns in the world, within Monte
Carlo error: otherwise the tree values states by something other than what its decisions do.
"""

from __future__ import annotations

import numpy as np
import pytest

from features.state import UserState
from models.bundle import ModelScorer
from models.decide import Decider
from models.planner import Planner
from models.policies import PolicyConfig
from simulation.rollout import InProcess, run_users
from simulation.simulate import Population
from simulation.synthetic import simulated_bundle
from simulation.worlds import world_from_dict

pytestmark = pytest.mark.slow

TINY = {
    "description": "one kind of user, a warm-up and a goal, three offers",
    "max_asks": 3,
    "catalog": [
        {"id": "intro", "stage": "start", "effort": 1, "value": 1},
        {"id": "buy", "stage": "convert", "effort": 6},
    ],
    "types": [
        {
            "name": "everyone",
            "weight": 1.0,
            "base": 0.6,
            "resistance": 0.25,
            "momentum": 0.3,
            "decline_penalty": 0.4,
            "value_coef": 0.1,
            "drop": -1.2,
            "leave": 0.1,
            "gap_hours": 12.0,
            "channel": {"email": 0.25, "search": 0.25, "social": 0.25, "referral": 0.25},
            "device": {"mobile": 0.5, "desktop": 0.5},
        }
    ],
}
USERS = 6000
SEED = 3


def test_value_of_a_first_visit_is_what_the_planner_then_earns() -> None:
    world = world_from_dict(TINY, name="tiny")
    cat = world.catalog
    scorer = ModelScorer(simulated_bundle(world, 8000, SEED, params={"n_estimators": 80}), cat)
    planner = Planner().bind(scorer, cat)
    population = Population(world, USERS)
    predicted = []
    for i in range(USERS):
        user = population.user(SEED + 1, i, prefix="v")
        out, _ = planner._plan(
            UserState(context=dict(user.context)),
            cat.eligible_indices(0),
            user.ts,
            None,
            scorer,
            cat,
        )
        predicted.append(out.scores[out.greedy])
    decider = Decider(cat, PolicyConfig("planner"), scorer=scorer)
    earned = run_users(world, USERS, SEED + 1, InProcess(world, decider), prefix="v")
    value = float(np.mean(predicted))
    # three standard errors of the Monte Carlo value, plus what eight thousand logged users
    # leave unlearned in the models
    assert abs(value - earned.conversion) <= 3 * earned.se + 0.02, (value, earned.conversion)
