"""``available_when`` over HTTP: single requests (served by the fast lane), batches and the
user view never offer a step the user's context rules out, however ready the model says they
are for it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.service.helpers import StartedClients, fake_factory

CATALOG = {
    "steps": [
        {"id": "read_intro", "stage": "start", "effort": 1},
        {"id": "team_invite", "stage": "build", "effort": 3, "available_when": {"plan": ["team"]}},
        {
            "id": "pro_report",
            "stage": "deliver",
            "effort": 2,
            "available_when": {"plan": ["pro", "team"], "country": {"not": ["de"]}},
        },
        {"id": "purchase", "stage": "convert", "effort": 8},
    ]
}
# the model likes the restricted steps most: only the rules keep them from being offered
PROBS = {"read_intro": 0.2, "team_invite": 0.95, "pro_report": 0.9, "purchase": 0.1}


@pytest.fixture
def api(tmp_path: Path, make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    path = tmp_path / "catalog-rules.yaml"
    path.write_text(yaml.safe_dump(CATALOG), encoding="utf-8")
    clients = StartedClients()
    app = create_app(
        make_settings(catalog=path, policy="greedy"), decider_factory=fake_factory("3", PROBS)
    )
    yield clients.start(app, raise_server_exceptions=False)
    clients.stop()


CASES = [
    ({"plan": "team", "country": "fr"}, "team_invite", {"read_intro", "team_invite", "pro_report"}),
    ({"plan": "pro", "country": "fr"}, "pro_report", {"read_intro", "pro_report"}),
    ({"plan": "pro", "country": "de"}, "read_intro", {"read_intro"}),
    ({"plan": "free"}, "read_intro", {"read_intro"}),
    ({}, "read_intro", {"read_intro"}),  # unknown plan: the plan-only steps are not offered
]


@pytest.mark.parametrize(("context", "step", "eligible"), CASES)
def test_single_request_honours_available_when(api, served, context, step, eligible):
    r = api.post("/v1/next-step", json={"user_id": "u1", "context": context})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["step"] == step
    assert {c["step"] for c in body["candidates"]} == eligible | {"purchase"}
    assert served  # the fast lane decided it


def test_batch_honours_available_when(api):
    requests = [{"user_id": f"b{i}", "context": ctx} for i, (ctx, _, _) in enumerate(CASES)]
    r = api.post("/v1/next-step:batch", json={"requests": requests})
    assert r.status_code == 200, r.text
    got = [d["step"] for d in r.json()["responses"]]
    assert got == [step for _, step, _ in CASES]


def test_requested_candidates_cannot_bring_back_an_unavailable_step(api):
    body = {"user_id": "c1", "context": {"plan": "free"}, "candidates": ["pro_report"]}
    r = api.post("/v1/next-step", json=body)
    assert r.status_code == 200
    assert (r.json()["step"], r.json()["reason"]) == (None, "no_eligible_step")


def test_the_users_known_context_counts_and_the_user_view_agrees(api):
    first = api.post("/v1/next-step", json={"user_id": "k1", "context": {"plan": "pro"}}).json()
    assert first["step"] == "pro_report"
    r = api.post("/v1/outcomes", json={"decision_id": first["decision_id"], "outcome": "declined"})
    assert r.status_code == 201, r.text
    # no context in this request: the plan known from the user's history still applies
    again = api.post("/v1/next-step", json={"user_id": "k1"}).json()
    assert again["step"] == "pro_report"
    view = api.get("/v1/users/k1").json()
    assert set(view["eligible"]) == {"read_intro", "pro_report", "purchase"}
