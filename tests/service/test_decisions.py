"""Eligibility, candidates, conversion and the batch endpoint."""

from __future__ import annotations

import random
from collections.abc import Callable

from fastapi.testclient import TestClient

from features.catalog import Catalog
from tests.service.helpers import CATALOG, GOAL, decide, fake_factory, outcome

CAT = Catalog.from_data(CATALOG)


def _eligible(accepted: set[str]) -> set[str]:
    return {s.id for s in CAT.eligible(CAT.mask_of(accepted))}


def test_never_offers_an_accepted_or_ineligible_step(
    make_client: Callable[..., TestClient],
) -> None:
    """Random walks of outcomes under a random policy: every offer is eligible at that moment."""
    client = make_client(policy="random", seed=3)
    rng = random.Random(0)
    for u in range(12):
        user, accepted, ts = f"walk{u}", set(), 1_700_000_000.0
        for _ in range(12):
            ts += 60
            d = decide(client, user, ts=ts)
            if d["step"] is None:
                assert d["reason"] == "converted"
                assert GOAL in accepted
                break
            assert d["step"] in _eligible(accepted), (accepted, d)
            assert {c["step"] for c in d["candidates"]} == _eligible(accepted)
            assert 0 < d["propensity"] <= 1
            result = rng.choice(["accepted", "accepted", "declined"])
            outcome(client, d["decision_id"], result, ts=ts + 1)
            if result == "accepted":
                accepted.add(d["step"])


def test_goal_accepted_means_step_null_reason_converted(client: TestClient) -> None:
    for step in ("read_intro", "create_account", GOAL):
        r = client.post("/v1/outcomes", json={"user_id": "c1", "step": step, "outcome": "accepted"})
        assert r.status_code == 201
    d = decide(client, "c1")
    assert d["step"] is None and d["reason"] == "converted"
    assert d["candidates"] == [] and d["propensity"] is None
    view = client.get("/v1/users/c1").json()
    assert view["converted"] is True and view["stage"] == "convert" and view["eligible"] == {}


def test_candidates_restrict_the_choice(client: TestClient) -> None:
    d = decide(client, "r1", candidates=["watch_clip", "create_account"])
    # create_account needs read_intro: only watch_clip is both requested and eligible
    assert d["step"] == "watch_clip"
    assert [c["step"] for c in d["candidates"]] == ["watch_clip"]
    d = decide(client, "r1", candidates=["purchase"])
    assert d["step"] is None and d["reason"] == "no_eligible_step"
    d = decide(client, "r1", candidates=[])
    assert d["step"] is None and d["reason"] == "no_eligible_step"


def test_unknown_candidate_is_422_even_for_a_converted_user(client: TestClient) -> None:
    r = client.post("/v1/next-step", json={"user_id": "r2", "candidates": ["watch_clip", "bogus"]})
    assert r.status_code == 422
    assert "bogus" in r.json()["detail"]


def test_a_model_drives_the_choice_and_is_reported(make_client: Callable[..., TestClient]) -> None:
    probs = {"read_intro": 0.2, "watch_clip": 0.9}
    client = make_client(policy="greedy", decider_factory=fake_factory("12", probs))
    d = decide(client, "g1")
    assert d["step"] == "watch_clip" and d["policy"] == "greedy" and d["model_version"] == "12"
    assert d["p_accept"] == 0.9
    assert {c["step"]: c["p_accept"] for c in d["candidates"]} == probs
    view = client.get("/v1/users/g1").json()
    assert view["eligible"] == probs and view["model_version"] == "12"
    ready = client.get("/readyz").json()
    assert ready["model"] == "12" and ready["policy"] == "greedy"


def test_exploration_records_exact_propensities(make_client: Callable[..., TestClient]) -> None:
    client = make_client(policy="ladder+epsilon=0.5")
    seen = {}
    for u in range(200):
        d = decide(client, f"e{u}")
        seen[d["step"]] = (d["propensity"], d["explored"])
    # two eligible steps: greedy one 0.5 + 0.25, the other 0.25
    assert seen == {"read_intro": (0.75, False), "watch_clip": (0.25, True)}


def test_decisions_are_stored_with_arm_policy_propensity(client: TestClient) -> None:
    d = decide(client, "s1", context={"channel": "email", "n": 3, "vip": True, "x": None})
    store = client.app.state.store
    with store.read() as conn:
        row = store.get_decision(conn, d["decision_id"])
    assert row.arm == "champion" and row.policy == "ladder" and row.model_version is None
    assert row.propensity == 1.0 and row.explored is False and row.step == "read_intro"
    assert '"channel":"email"' in row.context


# -- batch ------------------------------------------------------------------------------------
def test_batch_answers_in_order_with_per_item_problems(client: TestClient) -> None:
    r = client.post(
        "/v1/outcomes", json={"user_id": "b1", "step": "read_intro", "outcome": "accepted"}
    )
    assert r.status_code == 201
    reqs = [
        {"user_id": "b0"},
        {"user_id": "b1", "ts": "2025-03-04T10:11:12Z"},
        {"user_id": "b2", "candidates": ["nope"]},
        {"user_id": "b3", "candidates": ["watch_clip"]},
    ]
    r = client.post("/v1/next-step:batch", json={"requests": reqs})
    assert r.status_code == 200, r.text
    out = r.json()["responses"]
    assert len(out) == 4
    assert out[0]["user_id"] == "b0" and out[0]["step"] == "read_intro"
    assert out[1]["user_id"] == "b1" and out[1]["step"] == "watch_clip"
    assert out[2]["status"] == 422 and "nope" in out[2]["detail"]
    assert out[3]["step"] == "watch_clip"
    # stored decisions accept outcomes like single ones
    outcome(client, out[3]["decision_id"], "accepted")


def test_batch_of_1000(client: TestClient) -> None:
    reqs = [{"user_id": f"u{i % 300}", "context": {"i": i}} for i in range(1000)]
    r = client.post("/v1/next-step:batch", json={"requests": reqs})
    assert r.status_code == 200
    out = r.json()["responses"]
    assert [o["user_id"] for o in out] == [q["user_id"] for q in reqs]
    assert len({o["decision_id"] for o in out}) == 1000


def test_batch_shares_only_deterministic_decisions(
    make_client: Callable[..., TestClient],
) -> None:
    """First visits with the same request share one computation only when no draw is made:
    under exploration every user keeps their own seeded draw, exactly as single calls."""
    greedy = make_client(policy="ladder")
    reqs = [{"user_id": f"g{i}", "context": {"channel": "email"}} for i in range(50)]
    out = greedy.post("/v1/next-step:batch", json={"requests": reqs}).json()["responses"]
    assert {(o["step"], o["propensity"]) for o in out} == {("read_intro", 1.0)}
    assert len({o["decision_id"] for o in out}) == 50

    explore = make_client(policy="ladder+epsilon=0.5")
    reqs = [{"user_id": f"e{i}", "ts": 1.7e9, "context": {"channel": "email"}} for i in range(60)]
    batch = explore.post("/v1/next-step:batch", json={"requests": reqs}).json()["responses"]
    single = [explore.post("/v1/next-step", json=q).json() for q in reqs]
    assert [o["step"] for o in batch] == [o["step"] for o in single]
    assert len({o["step"] for o in batch}) > 1  # the draws differ between users
