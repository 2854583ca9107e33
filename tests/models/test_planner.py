"""The planner only ever offers eligible steps, says why when it offers nothing, and adapts."""

from __future__ import annotations

import numpy as np
import pytest

from features.state import UserState
from models.bundle import ModelScorer
from models.decide import Decider, UnknownCandidateError
from models.policies import PolicyConfig
from simulation.synthetic import simulated_bundle
from simulation.worlds import load_world


def _scorer(world_name: str, users: int = 4000, seed: int = 1) -> tuple:
    world = load_world(world_name)
    bundle = simulated_bundle(world, users, seed, params={"n_estimators": 120})
    return world, ModelScorer(bundle, world.catalog)


@pytest.fixture(scope="module")
def two_goals():
    return _scorer("two_goals")


@pytest.fixture(scope="module")
def eager():
    return _scorer("eager")


def test_never_offers_an_ineligible_step(two_goals) -> None:
    world, scorer = two_goals
    cat = world.catalog
    rng = np.random.default_rng(0)
    decider = Decider(
        cat, PolicyConfig("planner", "epsilon", 0.2), scorer=scorer, model_version="1"
    )
    for trial in range(150):
        state = UserState()
        t = 1.7e9
        for _ in range(int(rng.integers(0, 6))):
            elig = cat.eligible_indices(state.accepted_mask)
            if not elig:
                break
            s = int(rng.choice(elig))
            state.apply(cat, s, str(rng.choice(["accepted", "declined"])), t, {"channel": "email"})
            t += 3600
        res = decider.decide(f"u{trial}", state, now=t, context={"device": "mobile"})
        eligible = {cat.ids[i] for i in cat.eligible_indices(state.accepted_mask)}
        if res.step is None:
            assert res.reason in ("converted", "no_eligible_step")
            assert not eligible or state.converted(cat)
        else:
            assert res.step in eligible
            assert 0 < res.propensity <= 1
            assert {c.step for c in res.candidates} == eligible


def test_nothing_after_conversion_and_reason(two_goals) -> None:
    world, scorer = two_goals
    cat = world.catalog
    decider = Decider(cat, PolicyConfig("planner"), scorer=scorer)
    state = UserState()
    state.apply(cat, cat.index["create_account"], "accepted", 1.0)
    state.apply(cat, cat.index["buy_monthly"], "accepted", 2.0)
    res = decider.decide("u", state, now=3.0)
    assert res.step is None and res.reason == "converted"
    # candidates that are all ineligible: nothing to offer, and the reason says so
    res = decider.decide("v", UserState(), now=3.0, candidates=["buy_annual"])
    assert res.step is None and res.reason == "no_eligible_step"
    with pytest.raises(UnknownCandidateError):
        decider.decide("w", UserState(), now=3.0, candidates=["nope"])


def test_candidates_restrict_the_choice(two_goals) -> None:
    world, scorer = two_goals
    decider = Decider(world.catalog, PolicyConfig("planner"), scorer=scorer)
    res = decider.decide("u", UserState(), now=1.7e9, candidates=["watch_demo", "pick_plan"])
    assert res.step in ("watch_demo", "pick_plan")
    assert [c.step for c in res.candidates] == ["watch_demo", "pick_plan"]


def test_adapts_to_the_person(eager) -> None:
    """A 'ready' user (search traffic, quick to come back) is asked for the goal at once;
    a hesitant one (email traffic) gets a small first step."""
    world, scorer = eager
    cat = world.catalog
    decider = Decider(cat, PolicyConfig("planner"), scorer=scorer)
    ready = decider.decide(
        "r", UserState(), now=1.7e9, context={"channel": "search", "device": "desktop"}
    )
    hesitant = decider.decide(
        "h", UserState(), now=1.7e9, context={"channel": "email", "device": "desktop"}
    )
    assert ready.step == "subscribe"
    assert hesitant.step is not None and cat[hesitant.step].effort < cat["subscribe"].effort


def test_decisions_are_deterministic_given_state_and_seed(two_goals) -> None:
    world, scorer = two_goals
    cfg = PolicyConfig("planner", "softmax", 0.05)
    a = Decider(world.catalog, cfg, scorer=scorer, seed=3)
    b = Decider(world.catalog, cfg, scorer=scorer, seed=3)
    for i in range(20):
        ra = a.decide(f"u{i}", UserState(), now=1.7e9, context={"channel": "email"})
        rb = b.decide(f"u{i}", UserState(), now=1.7e9, context={"channel": "email"})
        assert (ra.step, ra.propensity, ra.explored) == (rb.step, rb.propensity, rb.explored)


def test_exploration_propensities_are_exact(two_goals) -> None:
    world, scorer = two_goals
    cat = world.catalog
    eps = 0.3
    decider = Decider(cat, PolicyConfig("planner", "epsilon", eps), scorer=scorer, seed=0)
    n = len(cat.eligible_indices(0))
    seen = {}
    for i in range(400):
        res = decider.decide(f"user-{i}", UserState(), now=1.7e9, context={"channel": "email"})
        seen.setdefault(res.step, res.propensity)
        assert res.propensity in (pytest.approx(1 - eps + eps / n), pytest.approx(eps / n))
        assert res.explored == (res.propensity == pytest.approx(eps / n))
    assert len(seen) > 1  # exploration did show other steps


def test_unseen_step_gets_a_prior_not_an_error(two_goals) -> None:
    from features.catalog import Catalog

    world, scorer = two_goals
    data = [s.to_dict() for s in world.catalog.steps]
    data.insert(1, {"id": "brand_new_webinar", "stage": "deliver", "effort": 2.5, "value": 2})
    cat = Catalog.from_data(data)
    scorer2 = ModelScorer(scorer.bundle, cat)
    decider = Decider(cat, PolicyConfig("planner"), scorer=scorer2)
    res = decider.decide("u", UserState(), now=1.7e9, context={"channel": "social"})
    p = {c.step: c.p_accept for c in res.candidates}
    assert 0 < p["brand_new_webinar"] < 1
