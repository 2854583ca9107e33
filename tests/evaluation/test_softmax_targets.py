"""Softmax exploration's target probabilities, as OPE replays them, are the Boltzmann formula
written out here: ``exp(score / T) / sum exp(score' / T)`` over the steps eligible at that
offer, with the base policy's scores (ladder: minus the effort; greedy: the readiness)."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.offpolicy import build_policy, evaluate_log
from features.catalog import load_catalog
from features.events import load_events
from models.bundle import ModelScorer
from simulation.simulate import write_simulation
from simulation.synthetic import bundle_from_frame
from simulation.worlds import load_world


def _boltzmann(scores: np.ndarray, temperature: float) -> np.ndarray:
    w = np.array([np.exp(s / temperature) for s in scores])  # small scores: no overflow
    return w / w.sum()


def test_softmax_target_probabilities_follow_the_formula(tmp_path) -> None:
    write_simulation(load_world("ladder"), 40, 4, tmp_path)
    catalog = load_catalog(tmp_path / "catalog.yaml")
    log = load_events(tmp_path / "events.csv", catalog)
    bundle = bundle_from_frame(log.frame, catalog, (), params={"n_estimators": 20})
    scorer = ModelScorer(bundle, catalog)
    names = {"ladder+softmax=0.5": 0.5, "greedy+softmax=0.1": 0.1}
    policies = {name: build_policy(name, catalog, scorer)[1] for name in names}
    dec = evaluate_log(log.frame, catalog, policies, scorer=scorer, keep=True)
    assert dec.eligible is not None and dec.states is not None and dec.distributions is not None
    ts = log.frame["ts"].to_numpy(dtype=float)
    checked = 0
    for i, (elig, state) in enumerate(zip(dec.eligible, dec.states, strict=True)):
        assert elig == catalog.eligible_indices(state.accepted_mask)
        efforts = np.array([catalog.efforts[s] for s in elig], dtype=float)
        p = scorer.p_accept(state, elig, float(ts[dec.row[i] - 1]), {})
        expected = {
            "ladder+softmax=0.5": _boltzmann(-efforts, 0.5),
            "greedy+softmax=0.1": _boltzmann(np.asarray(p), 0.1),
        }
        logged = int(dec.step[i])
        for name in names:
            np.testing.assert_allclose(dec.distributions[name][i], expected[name], rtol=1e-9)
            want = expected[name][elig.index(logged)] if logged in elig else 0.0
            assert dec.target[name][i] == pytest.approx(want, rel=1e-9, abs=1e-15)
        checked += len(elig) > 1
    assert checked > 50  # offers with a real choice among steps
