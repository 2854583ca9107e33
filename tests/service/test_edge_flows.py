"""Requests the happy path never sends: the same user twice in one batch, and an outcome whose
``ts`` is earlier than its decision's."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.service.helpers import fake_factory

TS = "2025-03-04T10:00:00Z"


def _strip(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "decision_id"}


def test_the_same_user_twice_in_one_batch_gets_two_decisions_like_a_lone_request(
    make_client: Any,
) -> None:
    client: TestClient = make_client(
        policy="greedy", decider_factory=fake_factory("3", {"watch_clip": 0.8})
    )
    r = client.post(
        "/v1/next-step:batch",
        json={"requests": [{"user_id": "twice", "ts": TS}, {"user_id": "other", "ts": TS},
                           {"user_id": "twice", "ts": TS}]},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    first, other, second = r.json()["responses"]
    assert [first["user_id"], other["user_id"], second["user_id"]] == ["twice", "other", "twice"]
    assert first["decision_id"] != second["decision_id"]  # two decisions, each its own id
    # neither saw the other (no outcome in between): both are what a lone request gets
    lone = client.post("/v1/next-step", json={"user_id": "lone", "ts": TS}).json()
    assert _strip(first) | {"user_id": "lone"} == _strip(lone)
    assert _strip(second) == _strip(first)
    # both were stored, and either can take its outcome
    for d in (first, second):
        ok = client.post(
            "/v1/outcomes", json={"decision_id": d["decision_id"], "outcome": "declined"}
        )
        assert ok.status_code == 201, ok.text
    history = client.get("/v1/users/twice").json()["history"]
    assert sorted(h["decision_id"] for h in history) == sorted(
        [first["decision_id"], second["decision_id"]]
    )


def test_an_outcome_before_its_decision_is_recorded_as_told_and_breaks_nothing(
    make_client: Any,
) -> None:
    """The service records the time it is told (the API does not refuse it); the user's
    history stays oldest first and later decisions and the user view keep working."""
    client: TestClient = make_client(policy="ladder")
    d = client.post("/v1/next-step", json={"user_id": "early", "ts": TS}).json()
    r = client.post(
        "/v1/outcomes",
        json={"decision_id": d["decision_id"], "outcome": "accepted", "ts": "2025-03-04T09:00:00Z"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["ts"] == "2025-03-04T09:00:00Z"
    view = client.get("/v1/users/early").json()
    assert [(h["step"], h["ts"]) for h in view["history"]] == [(d["step"], "2025-03-04T09:00:00Z")]
    assert view["accepted"] == [d["step"]]
    nxt = client.post("/v1/next-step", json={"user_id": "early", "ts": "2025-03-04T11:00:00Z"})
    assert nxt.status_code == 200 and nxt.json()["step"] not in (None, d["step"])
