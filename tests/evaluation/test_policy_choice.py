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


def test_untrusted_estimates_compete_with_their_bound_or_a_distribution_free_one() -> None:
    # a tight-looking bootstrap on 5 effective users does not beat a trusted estimate:
    # it competes with Hoeffding's bound 0.4 - sqrt(ln 40 / 10) < 0.05
    few = {"ladder": _result(0.05, 0.1), "planner": _result(0.35, 0.4, untrusted=True, ess=5)}
    rec = recommend(few)
    assert rec.policy == "ladder" and rec.trusted
    assert selection_low(0.4, 0.35, 5.0, True) == pytest.approx(0.4 - math.sqrt(math.log(40) / 10))
    # on 40 effective users its bootstrap bound competes: far better, recommended, untrusted
    far = {"ladder": _result(0.3, 0.33), "big_ask": _result(0.45, 0.5, untrusted=True, ess=40)}
    rec = recommend(far)
    assert rec.policy == "big_ask" and not rec.trusted and rec.low == pytest.approx(0.45)
    assert selection_low(0.9, 0.8, 0.0, True) == -math.inf
    with pytest.raises(ValueError):
        recommend({})
