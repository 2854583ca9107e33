"""Every logged state's candidate rows equal what the online fold builds for that state.

The reference replays each user's offers through ``UserState.apply`` in time order and builds
the rows of every eligible step with ``root_block`` and ``candidate_rows``, as the planner does
at serving time; ``logged_transitions`` must give the same rows, bit for bit, for a frame in
any row order, and link each offer to the same user's next one. A catalog with
``available_when`` rules on the context is among the cases: a step a user's context hides is
never a candidate, offline or online.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from features.catalog import Catalog
from features.offline import build_offline_features
from features.spec import FeatureSpec, candidate_rows, root_block
from features.state import UserState
from features.transitions import goal_worth_earned, logged_transitions
from simulation.simulate import generate_log
from simulation.worlds import load_world


def _replayed(frame: pd.DataFrame, catalog, spec: FeatureSpec):
    order = frame.sort_values(["user_id", "ts", "row"], kind="stable").index.to_numpy()
    roots: dict[int, tuple] = {}
    next_row = np.full(len(frame), -1)
    prev = None
    state = UserState()
    for r in order:
        if prev is None or frame.user_id[r] != frame.user_id[prev]:
            state = UserState()
        else:
            next_row[prev] = r
        context = {"channel": frame.channel[r], "device": frame.device[r]}
        eligible = catalog.eligible_indices(state.accepted_mask, catalog.available(context))
        roots[r] = (state.copy(), eligible, float(frame.ts[r]), context)
        outcome = "accepted" if frame.outcome[r] == "accepted" else "declined"
        state.apply(catalog, catalog.index[frame.step[r]], outcome, float(frame.ts[r]))
        prev = r
    rows = sorted(roots)
    block = root_block(spec, catalog, [roots[r] for r in rows])
    X = candidate_rows(
        spec, catalog, block.states, block.now, block.contexts, block.node, block.step
    )
    return next_row, np.asarray(rows)[block.node], block.step, X


def _with_rules(name: str):
    """The world with two of its warm-ups shown only to some contexts (``available_when``)."""
    w = load_world(name)
    warm = [i for i, st in enumerate(w.catalog.steps) if not st.is_goal][:2]
    rules = [{"channel": ["email", "search"]}, {"device": {"not": ["mobile"]}}]
    steps = list(w.catalog.steps)
    for i, rule in zip(warm, rules, strict=True):
        steps[i] = dataclasses.replace(steps[i], extra={**steps[i].extra, "available_when": rule})
    return dataclasses.replace(w, catalog=Catalog(steps))


@pytest.mark.parametrize("world", ["random:6", "random:9", "two_goals", "random:6+rules"])
def test_candidate_rows_equal_the_online_fold(world: str) -> None:
    w = _with_rules("random:6") if world.endswith("+rules") else load_world(world)
    cat = w.catalog
    frame = pd.DataFrame(generate_log(w, 400, 3))
    frame["row"] = np.arange(1, len(frame) + 1)
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)  # any row order
    spec = FeatureSpec.from_frame(frame, ["channel", "device"])
    off = build_offline_features(frame, cat, spec)
    tr = logged_transitions(frame, cat, spec, off)
    next_row, node, step, X = _replayed(frame, cat, spec)
    np.testing.assert_array_equal(tr.next_row, next_row)
    np.testing.assert_array_equal(tr.node, node)
    np.testing.assert_array_equal(tr.step, step)
    half = len(tr) // 2  # built a slice at a time
    got = np.vstack([tr.rows(0, half), tr.rows(half, len(tr))])
    np.testing.assert_array_equal(got, X)
    if cat.has_availability:  # the rules hid steps from some states: fewer candidates
        plain = Catalog([dataclasses.replace(st, extra={}) for st in cat.steps])
        assert len(tr) < len(logged_transitions(frame, plain, spec, off))


def test_what_each_offer_won_is_its_goals_worth_when_accepted() -> None:
    w = load_world("two_goals")
    cat = w.catalog
    frame = pd.DataFrame(generate_log(w, 200, 1))
    off = build_offline_features(frame, cat, FeatureSpec.from_frame(frame, ["channel"]))
    won = goal_worth_earned(cat, off)
    goal = np.asarray(cat.goal_rewards)[off.step_index] > 0
    assert (won[off.accepted & goal] > 0).all()
    assert (won[~(off.accepted & goal)] == 0).all()
    assert set(np.unique(won[won > 0])) <= {cat.goal_rewards[i] for i in cat.goal_indices}
