"""The recommendation rule: best lower bound among trusted estimates, ties to the simpler."""

from __future__ import annotations

import pytest

from training.offpolicy import Estimate, Trajectory
from training.policy_choice import CANDIDATES, recommend


def _result(low: float, value: float, *, untrusted: bool = False) -> Trajectory:
    return Trajectory(
        headline=Estimate("wdr", value, low, 1.0 if untrusted else value + 0.05, 100.0),
        estimates={},
        ess=10.0 if untrusted else 100.0,
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


def test_untrusted_estimates_never_win_and_all_untrusted_is_said() -> None:
    rec = recommend({"ladder": _result(0.05, 0.1), "planner": _result(0.6, 0.9, untrusted=True)})
    assert rec.policy == "ladder" and rec.trusted
    none = recommend({"planner": _result(0.0, 0.9, untrusted=True)})
    assert not none.trusted
    with pytest.raises(ValueError):
        recommend({})
