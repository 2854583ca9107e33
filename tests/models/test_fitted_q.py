"""Fitted Q iteration learns the exact optimal Q of a tiny world from a log of it.

The world is ``test_planner_exact``'s: one user type, three asks, prerequisites, several goals and
every readiness effect. Its log explores uniformly, so every state the optimum passes through is
in it; the values backed up through three fits must then come out as the exact programme's
optimal Q of every first offer, up to estimation error on a finite log.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from features.offline import build_offline_features
from features.spec import FeatureSpec, candidate_rows, root_block
from features.state import UserState
from features.transitions import goal_worth_earned, logged_transitions
from models.fitted_q import FittedQ
from simulation.simulate import START, Dynamics, ExactSolver, generate_log, make_user


@pytest.fixture(scope="module")
def fitted(tiny_world):
    world = dataclasses.replace(tiny_world, logging_uniform=1.0)
    frame = pd.DataFrame(generate_log(world, 20_000, 5))
    frame["row"] = np.arange(1, len(frame) + 1)
    cat = world.catalog
    spec = FeatureSpec.from_frame(frame, ["channel", "device"])
    off = build_offline_features(frame, cat, spec)
    tr = logged_transitions(frame, cat, spec, off)
    model = FittedQ(random_state=0, n_jobs=1).fit(
        off.X, goal_worth_earned(cat, off), transitions=tr
    )
    return world, spec, model


def test_backs_up_as_many_times_as_the_longest_user_asks(fitted) -> None:
    world, _, model = fitted
    assert model.n_iterations_ == world.max_asks


def test_first_offer_values_are_the_exact_optimal_q(fitted) -> None:
    world, spec, model = fitted
    cat = world.catalog
    exact = ExactSolver(world).q_optimal(world.types[0], START)
    user = make_user(world, Dynamics(world), 1, 0)
    eligible = cat.eligible_indices(0, cat.available(user.context))
    block = root_block(spec, cat, [(UserState(), eligible, user.ts, user.context)])
    X = candidate_rows(spec, cat, block.states, block.now, block.contexts, block.node, block.step)
    q = model.predict(X)
    truth = np.array([exact[s] for s in eligible])
    assert np.abs(q - truth).max() < 0.03, (q, truth)
    assert eligible[int(np.argmax(q))] == eligible[int(np.argmax(truth))]


def test_same_log_same_values(fitted) -> None:
    world, spec, _ = fitted
    frame = pd.DataFrame(generate_log(world, 500, 9))
    off = build_offline_features(frame, world.catalog, spec)
    tr = logged_transitions(frame, world.catalog, spec, off)
    earned = np.where(off.accepted, 1.0, 0.0)
    a = FittedQ(random_state=3, n_jobs=1).fit(off.X, earned, transitions=tr).predict(off.X)
    b = FittedQ(random_state=3, n_jobs=1).fit(off.X, earned, transitions=tr).predict(off.X)
    assert np.array_equal(a, b)
    # a log this small is fitted single-threaded unless asked otherwise (models.boosting)
    by_size = FittedQ(random_state=3).fit(off.X, earned, transitions=tr)
    assert by_size.booster_.params["num_threads"] == 1
    assert np.array_equal(by_size.predict(off.X), a)
