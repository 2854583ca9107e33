"""Issue 7 must-show: on simulator logs with known true values, over 20 seeds, the 95% intervals
of the one-step estimates cover the truth at least 85% of the time, for several policies.

Estimand (``evaluation.offpolicy``): the accept rate of the offer the target policy would make in
the logged states, ``(1/n) sum_i sum_s pi(s | x_i) P(accept | type_i, state_i, s)``. The truth
is computed row by row from the simulator's true dynamics (``simulation.simulate.Dynamics``) on
the hidden type (``generate_log(with_truth=True)``) and the simulator state rebuilt from the
state ``compare`` folded: accepted steps, accepts and declines in a row (capped), asks so far.
That rebuilt state reproduces the log's ``true_p_accept`` of every logged offer exactly (checked),
so the truth and the estimate see the same states.

Policies: ``ladder`` and ``random`` (no model) and ``greedy`` (its distribution comes from a
readiness model trained once on a separate log, which also serves as the reward model for DR).
Conversion, whose truth is the exact value of a fixed policy (``ExactSolver``), is checked too.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from evaluation.offpolicy import build_policy, evaluate_log, one_step, trajectory
from features.events import validate_frame
from models.bundle import ModelScorer
from simulation.simulate import CAP, Dynamics, ExactSolver, generate_log
from simulation.synthetic import bundle_from_frame
from simulation.worlds import load_world

pytestmark = pytest.mark.slow

WORLD = "ladder"
SEEDS = range(20)
USERS = 400
POLICIES = ("ladder", "random", "greedy")
CONTEXT = ("channel", "device")
MIN_COVERAGE = 0.85


def _scorer(world, catalog):  # type: ignore[no-untyped-def]
    """A readiness model trained on its own log (seed 999), never on the evaluated ones."""
    frame = validate_frame(pd.DataFrame(generate_log(world, 2500, 999)), catalog, source="train")
    bundle = bundle_from_frame(frame.frame, catalog, CONTEXT, params={"n_estimators": 60})
    return ModelScorer(bundle, catalog)


def test_one_step_intervals_cover_the_simulator_truth() -> None:
    world = load_world(WORLD)
    catalog = world.catalog
    dyn = Dynamics(world)
    types = {t.name: t for t in world.types}
    scorer = _scorer(world, catalog)
    policies = {name: build_policy(name, catalog, scorer)[1] for name in POLICIES}
    exact = ExactSolver(world).table()

    estimators = ("ipw", "snipw", "dr")
    covered = {(p, e): 0 for p in POLICIES for e in estimators}
    conv_covered = dict.fromkeys(("ladder", "random"), 0)
    separated = 0
    truths: dict[str, list[float]] = {p: [] for p in POLICIES}
    for seed in SEEDS:
        log = validate_frame(
            pd.DataFrame(generate_log(world, USERS, 100 + seed, with_truth=True)),
            catalog,
            source=f"seed {seed}",
        )
        dec = evaluate_log(
            log.frame, catalog, policies, scorer=scorer, context_columns=CONTEXT, keep=True
        )
        assert dec.states is not None and dec.eligible is not None and dec.distributions
        by_row = log.frame.set_index("row").loc[dec.row]
        user_type = by_row["user_type"].to_numpy()
        true_logged = by_row["true_p_accept"].to_numpy(dtype=np.float64)

        truth = dict.fromkeys(POLICIES, 0.0)
        for i, state in enumerate(dec.states):
            sim_state = (
                state.accepted_mask,
                min(state.cons_accepts, CAP),
                min(state.cons_declines, CAP),
                state.n_asks,
            )
            t = types[user_type[i]]
            elig = dec.eligible[i]
            p_true = np.array([dyn.p_accept(t, sim_state, s) for s in elig])
            assert p_true[elig.index(int(dec.step[i]))] == pytest.approx(true_logged[i], abs=1e-12)
            for name in POLICIES:
                truth[name] += float(dec.distributions[name][i] @ p_true)
        truth = {name: v / dec.n_rows for name, v in truth.items()}

        results = {name: one_step(dec, name, n_boot=200, seed=seed) for name in POLICIES}
        for name, r in results.items():
            truths[name].append(truth[name])
            for est in estimators:
                e = r.estimates[est]
                covered[(name, est)] += e["low"] <= truth[name] <= e["high"]
        # teeth: the intervals tell the policies apart (ladder's misses random's truth)
        lad = results["ladder"].estimates["snipw"]
        separated += not (lad["low"] <= truth["random"] <= lad["high"])
        for name in conv_covered:
            c = trajectory(dec, name, n_boot=200, seed=seed).headline
            conv_covered[name] += c.low <= exact[name]["overall"] <= c.high

    n = len(SEEDS)
    rates = {key: hits / n for key, hits in covered.items()}
    print("one-step coverage:", rates)
    print("conversion coverage:", {k: v / n for k, v in conv_covered.items()})
    print("mean truth:", {k: round(float(np.mean(v)), 4) for k, v in truths.items()})
    for key, rate in rates.items():
        assert rate >= MIN_COVERAGE, (key, rate)
    for name, hits in conv_covered.items():
        assert hits / n >= MIN_COVERAGE, (name, hits)
    assert separated == n
