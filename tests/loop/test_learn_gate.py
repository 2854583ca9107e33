"""The learner gate's OPE part vetoes on evidence of harm (``loop.learn_gate``): a candidate
is refused only when its planner's value is below the champion's by more than the margin across
the whole paired interval; a wide interval that straddles the margin lets log loss decide."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluation.trajectory_ope import Difference
from features.catalog import load_catalog
from features.events import load_events
from loop.learn_gate import GateResult, _ope_check, ope_refuses
from simulation.simulate import write_simulation
from simulation.synthetic import bundle_from_frame
from simulation.worlds import load_world

MARGIN = 0.02


def _diff(low: float, high: float) -> Difference:
    return Difference("wdr", (low + high) / 2, low, high, 500, 0.4, 0.4)


def test_only_an_interval_wholly_below_the_margin_refuses() -> None:
    assert ope_refuses(_diff(-0.40, -0.05), MARGIN)  # clearly worse
    assert not ope_refuses(_diff(-0.30, +0.30), MARGIN)  # says nothing either way
    assert not ope_refuses(_diff(-0.30, -0.01), MARGIN)  # worse, but maybe within the margin
    assert not ope_refuses(_diff(+0.01, +0.20), MARGIN)  # better


def test_a_candidate_identical_to_the_champion_is_never_refused(tmp_path: Path) -> None:
    """The same model on both sides differs by exactly zero on every resample; the missing mass
    still widens the interval (its low end drops by that mass), which a rule asking the low end
    to clear ``-margin`` would have refused."""
    write_simulation(load_world("eager"), 1500, 7, tmp_path)  # enough overlap not to abstain
    catalog = load_catalog(tmp_path / "catalog.yaml")
    frame = load_events(tmp_path / "events.csv", catalog).frame
    bundle = bundle_from_frame(frame, catalog, (), params={"n_estimators": 20})
    result = GateResult(True, "log loss passed")
    _ope_check(result, bundle, bundle, frame, catalog, MARGIN, seed=0)
    assert result.ope is not None
    assert result.ope.value == 0.0 and result.ope.low < 0.0 < result.ope.high
    assert result.ope_status == "passed", result.reason
    assert "upper bound >=" in result.reason
    assert np.isfinite(result.metrics()["ope_diff_high"])
