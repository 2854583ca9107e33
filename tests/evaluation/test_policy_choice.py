"""The recommendation rule: the planner unless a challenger is confidently better; among
challengers the best lower bound, ties to the simpler."""

from __future__ import annotations

import math

import pytest

from evaluation.offpolicy import Estimate, Trajectory
from evaluation.policy_choice import CANDIDATES, recommend, selection_high, selection_low


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


def test_a_tighter_rule_does_not_displace_the_planner_it_is_not_shown_to_beat() -> None:
    # the ladder's interval [0.30, 0.38] is tighter and its lower bound higher, but it overlaps
    # the planner's [0.28, 0.45]: no evidence the ladder is better, so the planner stays
    rec = recommend({"ladder": _result(0.30, 0.33), "planner": _result(0.28, 0.40)})
    assert rec.policy == "planner" and rec.trusted and rec.low == pytest.approx(0.28)
    # equal estimates everywhere: the planner too
    assert recommend({n: _result(0.25, 0.3) for n in CANDIDATES}).policy == "planner"


def test_a_challenger_whose_lower_bound_clears_the_planners_upper_bound_wins() -> None:
    results = {
        "ladder": _result(0.40, 0.45),  # [0.40, 0.50] above the planner's [0.20, 0.30]
        "big_ask": _result(0.42, 0.44),  # the best lower bound among the challengers
        "greedy": _result(0.29, 0.50),  # a better point estimate, but overlapping the planner
        "planner": _result(0.20, 0.25),
    }
    rec = recommend(results)
    assert rec.policy == "big_ask" and rec.low == pytest.approx(0.42)
    # ... and ties among the challengers go to the simpler one
    results["ladder"] = _result(0.42, 0.45)
    assert recommend(results).policy == "ladder"


def test_without_a_planner_the_best_lower_bound_wins_ties_to_the_simpler() -> None:
    results = {name: _result(0.25, 0.3) for name in reversed(CANDIDATES) if name != "planner"}
    assert recommend(results).policy == CANDIDATES[0]
    assert recommend({"ladder": _result(0.2, 0.3), "greedy": _result(0.2, 0.5)}).policy == "ladder"
    assert recommend({"big_ask": _result(0.2, 0.3), "greedy": _result(0.21, 0.5)}).policy == (
        "greedy"
    )


def test_a_flagged_planner_defends_with_the_wider_of_its_two_upper_bounds() -> None:
    # Clopper-Pearson upper limits of 3/10 and 20/40 (textbook): 0.6525 and 0.6620
    assert selection_high(0.3, 0.31, 10.0, True) == pytest.approx(0.6525, abs=1e-4)
    assert selection_high(0.5, 0.51, 40.0, True) == pytest.approx(0.6620, abs=1e-4)
    assert selection_high(0.5, 0.90, 40.0, True) == 0.90  # a wider bootstrap bound is kept
    assert selection_high(0.5, 0.51, 40.0, False) == 0.51  # a trusted estimate keeps its own
    assert selection_high(0.5, 0.51, 0.0, True) == math.inf
    assert selection_high(1.0, 1.0, 40.0, True, max_reward=1.0) == 1.0
    # a planner seen on 10 effective users at 0.3: a trusted ladder at [0.5, 0.6] is not enough
    thin = {"ladder": _result(0.5, 0.55), "planner": _result(0.29, 0.3, untrusted=True)}
    assert recommend(thin).policy == "planner"
    thin["ladder"] = _result(0.7, 0.75)  # above 0.6525: confidently better
    assert recommend(thin).policy == "ladder"


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
    few = {"ladder": _result(0.1, 0.15), "big_ask": _result(0.35, 0.4, untrusted=True, ess=5)}
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
