"""The recommendation rule: best lower bound among trusted estimates, ties to the simpler."""

from __future__ import annotations

import math

import pytest

from evaluation.offpolicy import Estimate, Trajectory
from evaluation.policy_choice import CANDIDATES, recommend, selection_low


def _result(low: float, value: float, *, untrusted: bool = False, ess: float = 10.0) -> Trajectory:
    high = value + 0.05
    return Trajectory(
        headline=Estimate("wdr", value, 0.0 if untrusted else low, 1.0 if untrusted else high),
        estimates={"wdr": {"value": value, "low": low, "high": high}},
        ess=ess if untrusted else 1000.0,
        users=1000,
        clipped_share=0.0,
        supported_share=1.0,
        max_weight=float("inf"),
        low_overlap=untrusted,
    )


def test_the_best_lower_bound_wins_not_the_best_point_estimate() -> None:
    rec = recommend({"ladder": _result(0.30, 0.33), "planner": _result(0.28, 0.40)})
    assert rec.policy == "ladder" and rec.trusted and rec.low == pytest.approx(0.30)


def test_ties_go_to_the_simpler_policy_in_candidate_order() -> None:
    results = {name: _result(0.25, 0.3) for name in reversed(CANDIDATES)}
    assert recommend(results).policy == CANDIDATES[0]
    assert recommend({"planner": _result(0.2, 0.3), "greedy": _result(0.2, 0.5)}).policy == (
        "greedy"
    )


def test_untrusted_estimates_compete_with_the_korn_graubard_bound() -> None:
    # the Clopper-Pearson limits of 3/10 and 20/40 are textbook values: [0.0667, 0.6525] and
    # [0.3380, 0.6620]; an untrusted estimate is a proportion seen on ESS effective users
    assert selection_low(0.3, 0.29, 10.0, True) == pytest.approx(0.0667, abs=1e-4)
    assert selection_low(0.5, 0.49, 40.0, True) == pytest.approx(0.3380, abs=1e-4)
    assert selection_low(1.0, 0.9, 40.0, True, max_reward=2.0) == pytest.approx(0.6760, abs=2e-4)
    assert selection_low(0.0, 0.0, 500.0, True) == 0.0
    assert selection_low(0.9, 0.8, 0.0, True) == -math.inf
    assert selection_low(0.9, 0.8, 3.0, False) == 0.8  # a trusted estimate keeps its bootstrap
    # a tight-looking bootstrap on 5 effective users does not beat a trusted estimate
    few = {"ladder": _result(0.1, 0.15), "planner": _result(0.35, 0.4, untrusted=True, ess=5)}
    rec = recommend(few)
    assert rec.policy == "ladder" and rec.trusted
    # on 40 effective users it is far better: recommended, untrusted, with its bound
    far = {"ladder": _result(0.3, 0.33), "big_ask": _result(0.45, 0.5, untrusted=True, ess=40)}
    rec = recommend(far)
    assert rec.policy == "big_ask" and not rec.trusted and rec.low == pytest.approx(0.338, abs=1e-3)


def test_a_policy_known_to_convert_nobody_loses_to_an_uncertain_one_that_converts_some() -> None:
    # a log that followed the ladder for 750 effective users, none of whom converted, and the
    # goal-first policy for under 3: nothing guarantees the latter much, but the ladder is
    # certainly worse than 15% and a vacuous bound must not hand it the recommendation
    results = {
        "ladder": _result(0.0, 0.0),
        "big_ask": _result(0.0, 0.154, untrusted=True, ess=2.5),
    }
    assert recommend(results).policy == "big_ask"


def test_no_candidates_is_an_error() -> None:
    with pytest.raises(ValueError):
        recommend({})
