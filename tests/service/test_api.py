"""The HTTP contract (docs/design.md §6): shapes and every status code, SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.service.helpers import CATALOG, GOAL, decide, outcome

PROBLEM = "application/problem+json"
TS = "2025-03-04T10:11:12Z"


def assert_problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == status
    assert {"type", "title", "status", "detail"} <= set(body)
    assert "Traceback" not in r.text
    return body


def test_next_step_has_exactly_the_contract_fields(client: TestClient) -> None:
    body = decide(client, "u1", context={"channel": "email"}, ts=TS)
    assert list(body) == [
        "decision_id", "user_id", "step", "stage", "effort", "p_accept", "propensity",
        "explored", "policy", "arm", "model_version", "candidates", "reason", "suppressed",
    ]  # fmt: skip
    assert body["suppressed"] == []  # guardrails (issue 8); "explanation" only with explain
    assert body["user_id"] == "u1"
    assert body["step"] == "read_intro" and body["stage"] == "start" and body["effort"] == 1
    # no model: the ladder baseline, and it says so
    assert body["policy"] == "ladder" and body["model_version"] is None
    assert body["propensity"] == 1.0 and body["explored"] is False and body["reason"] is None
    assert body["arm"] == "champion"
    assert len(body["decision_id"]) == 32
    assert body["candidates"] == [
        {"step": "read_intro", "p_accept": None, "score": -1.0},
        {"step": "watch_clip", "p_accept": None, "score": -2.0},
    ]


def test_outcome_flow_and_user_view(client: TestClient) -> None:
    d = decide(client, "u1", ts=TS)
    rec = outcome(client, d["decision_id"], "accepted")
    assert rec["ts"] == TS  # defaults to the decision's ts
    assert rec["step"] == "read_intro" and rec["converted"] is False
    nxt = decide(client, "u1", ts="2025-03-04T10:20:00Z")
    assert nxt["step"] in {"watch_clip", "create_account"}
    view = client.get("/v1/users/u1").json()
    assert view["accepted"] == ["read_intro"]
    assert view["stage"] == "start" and view["converted"] is False
    assert set(view["eligible"]) == {"watch_clip", "create_account"}
    assert view["history"] == [
        {"decision_id": d["decision_id"], "step": "read_intro", "outcome": "accepted", "ts": TS}
    ]


def test_steps_and_experiments(client: TestClient) -> None:
    steps = client.get("/v1/steps").json()["steps"]
    assert [s["id"] for s in steps] == [s["id"] for s in CATALOG["steps"]]
    assert steps[0]["title"] == "Read the intro"  # extra catalog fields are kept
    assert steps[4]["requires"] == ["create_account"]
    exp = client.get("/v1/experiments").json()
    assert exp["arms"] == [
        {
            "name": "champion",
            "policy": "ladder",
            "configured_policy": "planner",
            "exploration": None,
            "model": "models:/nextstep@champion",
            "model_version": None,
            "weight": 1.0,
            "shadow_of": None,
        }
    ]


def test_health_ready_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "degraded" and body["store"] == "ok"  # planner without a model
    assert body["model"] is None and body["policy"] == "ladder"
    decide(client, "m1", ts=TS)
    text = client.get("/metrics").text
    assert 'nextstep_decisions_total{arm="champion",policy="ladder",step="read_intro"} 1.0' in text
    assert "nextstep_http_request_seconds_bucket" in text
    assert 'nextstep_model_info{arm="champion",model_version="none"' in text
    assert "nextstep_store_errors_total" in text


def test_openapi_documents_problems(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/v1/outcomes"]["post"]
    assert {"201", "404", "409", "413", "415", "422"} <= set(op["responses"])
    assert list(op["responses"]["409"]["content"]) == [PROBLEM]
    assert "/v1/next-step:batch" in spec["paths"]
    assert client.get("/docs").status_code == 200


# -- status codes, table-driven -------------------------------------------------------------
NS, OUT, BATCH = "/v1/next-step", "/v1/outcomes", "/v1/next-step:batch"
JSON_CT = {"content-type": "application/json"}


def js(body: Any) -> dict[str, Any]:
    return {"json": body}


def raw(data: bytes, **headers: str) -> dict[str, Any]:
    return {"content": data, "headers": {**JSON_CT, **headers}}


BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int]] = [
    ("missing user_id", NS, js({}), 422),
    ("empty user_id", NS, js({"user_id": ""}), 422),
    ("user_id too long", NS, js({"user_id": "x" * 257}), 422),
    ("NUL in user_id", NS, js({"user_id": "a\x00b"}), 422),
    ("unknown field", NS, js({"user_id": "u", "foo": 1}), 422),
    ("bad ts", NS, js({"user_id": "u", "ts": "yesterday"}), 422),
    ("bool ts", NS, js({"user_id": "u", "ts": True}), 422),
    ("huge ts", NS, js({"user_id": "u", "ts": 1e300}), 422),
    ("ts in year 9999", NS, js({"user_id": "u", "ts": "9999-01-01T00:00:00Z"}), 422),
    ("ts before 1970", NS, js({"user_id": "u", "ts": -172800}), 422),
    ("ts in milliseconds", NS, js({"user_id": "u", "ts": 1741083072000}), 422),
    ("nested context", NS, js({"user_id": "u", "context": {"a": {"b": 1}}}), 422),
    ("long context value", NS, js({"user_id": "u", "context": {"a": "0" * 257}}), 422),
    ("context not object", NS, js({"user_id": "u", "context": [1]}), 422),
    ("unknown candidate", NS, js({"user_id": "u", "candidates": ["nope"]}), 422),
    ("body is a list", NS, js([1, 2]), 422),
    ("malformed JSON", NS, raw(b'{"user_id": '), 400),
    ("not UTF-8", NS, raw(b'{"user_id": "\xff\xfe"}'), 400),
    ("lone surrogate", NS, raw(b'{"user_id": "\\ud800"}'), 422),
    ("NaN literal", NS, raw(b'{"user_id": "u", "ts": NaN}'), 422),
    ("deep nesting", NS, raw(b"[" * 100_000 + b"]" * 100_000), 400),
    ("text/plain body", NS, raw(b'{"user_id": "u"}', **{"content-type": "text/plain"}), 415),
    ("no content type", OUT, {"content": b'{"user_id": "u"}'}, 415),
    ("form body", OUT, {"data": {"a": "b"}}, 415),
    ("bad outcome", OUT, js({"decision_id": "d", "outcome": "maybe"}), 422),
    (
        "outcome forms mixed",
        OUT,
        js({"decision_id": "d", "user_id": "u", "outcome": "accepted"}),
        422,
    ),
    ("unknown decision", OUT, js({"decision_id": "0" * 32, "outcome": "accepted"}), 404),
    ("organic unknown step", OUT, js({"user_id": "u", "step": "nope", "outcome": "accepted"}), 422),
    ("empty batch", BATCH, js({"requests": []}), 422),
    ("batch over 1,000", BATCH, js({"requests": [{"user_id": "u"}] * 1001}), 422),
    ("oversized body", NS, raw(b" " * ((1 << 20) + 1)), 413),
    ("bad Content-Length", NS, raw(b"{}", **{"content-length": "abc"}), 400),
]


@pytest.mark.parametrize(
    ("path", "kwargs", "status"), [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_requests_are_problems(
    client: TestClient, path: str, kwargs: dict[str, Any], status: int
) -> None:
    body = assert_problem(client.post(path, **kwargs), status)
    if status == 422 and "errors" in body:
        assert all({"loc", "msg", "type"} <= set(e) for e in body["errors"])


def test_streamed_oversized_body_is_413(client: TestClient) -> None:
    def chunks():  # no Content-Length: the guard must count what arrives
        for _ in range(40):
            yield b" " * 65536

    r = client.post("/v1/next-step", content=chunks(), headers={"content-type": "application/json"})
    assert_problem(r, 413)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/v1/next-step", "POST"),
        ("GET", "/v1/outcomes", "POST"),
        ("POST", "/v1/steps", "GET"),
        ("PUT", "/v1/users/u1", "GET"),
    ],
)
def test_wrong_method_is_405_with_allow(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    r = client.request(method, path)
    assert_problem(r, 405)
    assert allow in r.headers["allow"]


@pytest.mark.parametrize("path", ["/nope", "/v1", "/v2/next-step", "/v1/users"])
def test_unknown_route_is_404(client: TestClient, path: str) -> None:
    assert_problem(client.get(path), 404)


def test_second_different_outcome_is_409_identical_repeat_is_201(client: TestClient) -> None:
    d = decide(client, "u2", ts=TS)
    first = outcome(client, d["decision_id"], "declined")
    again = outcome(client, d["decision_id"], "declined")
    assert again == first  # the original record
    r = client.post("/v1/outcomes", json={"decision_id": d["decision_id"], "outcome": "accepted"})
    assert "already has outcome" in assert_problem(r, 409)["detail"]


def test_outcome_of_a_decision_that_offered_nothing_is_409(client: TestClient) -> None:
    r = client.post(
        "/v1/outcomes", json={"user_id": "u3", "step": "read_intro", "outcome": "accepted"}
    )
    assert r.status_code == 201
    d = decide(client, "u3", candidates=["read_intro"])
    assert d["step"] is None and d["reason"] == "no_eligible_step"
    r = client.post("/v1/outcomes", json={"decision_id": d["decision_id"], "outcome": "accepted"})
    assert_problem(r, 409)


def test_outcomes_after_conversion_are_409(client: TestClient) -> None:
    for step in ("read_intro", "create_account", GOAL):
        r = client.post("/v1/outcomes", json={"user_id": "u4", "step": step, "outcome": "accepted"})
        assert r.status_code == 201, r.text
    assert r.json()["converted"] is True
    r = client.post(
        "/v1/outcomes", json={"user_id": "u4", "step": "watch_clip", "outcome": "declined"}
    )
    assert "converted" in assert_problem(r, 409)["detail"]


def test_errors_never_echo_tracebacks_or_raw_input(client: TestClient) -> None:
    r = client.post("/v1/next-step", json={"user_id": "u", "context": {"k": {"x": "SECRET"}}})
    assert_problem(r, 422)
    assert "SECRET" not in r.text


def test_json_numbers_and_ids_round_trip(client: TestClient) -> None:
    # ("%2F" is covered end to end: the TestClient unquotes paths twice)
    weird = ["o'brien", 'quote"d', "Ünïcødé 🚀", "'; DROP TABLE decisions; --", "a/b/c", " "]
    for uid in weird:
        d = decide(client, uid, ts=TS, context={"note": uid})
        assert d["user_id"] == uid
        outcome(client, d["decision_id"], "accepted")
        from urllib.parse import quote

        view = client.get(f"/v1/users/{quote(uid, safe='')}")
        assert view.status_code == 200, (uid, view.text)
        assert view.json()["user_id"] == uid
        assert view.json()["accepted"] == ["read_intro"]


def test_epoch_and_iso_ts_are_the_same_instant(client: TestClient) -> None:
    a = decide(client, "t1", ts=1741083072)
    outcome(client, a["decision_id"], "accepted")
    hist = client.get("/v1/users/t1").json()["history"]
    assert hist[0]["ts"] == TS
    r = client.post(
        "/v1/outcomes",
        json={
            "user_id": "t2",
            "step": "read_intro",
            "outcome": "declined",
            "ts": "2025-03-04T11:11:12+01:00",
        },
    )
    assert r.json()["ts"] == TS


def test_problem_body_is_valid_json_for_odd_keys(client: TestClient) -> None:
    r = client.post(
        "/v1/next-step",
        content=json.dumps({"user_id": "u", "context": {"\ud800": 1}}).encode(),
        headers={"content-type": "application/json"},
    )
    assert_problem(r, 422)


def test_user_readiness_time_can_be_given(make_client: Any) -> None:
    from tests.service.helpers import fake_factory

    client = make_client(policy="greedy", decider_factory=fake_factory("5", {"watch_clip": 0.7}))
    for ts in ("2025-03-04T10:11:12Z", "1741083072", "1741083072.5"):
        r = client.get("/v1/users/q1", params={"ts": ts})
        assert r.status_code == 200, r.text
        assert r.json()["eligible"]["watch_clip"] == 0.7
    assert client.get("/v1/users/q1", params={"ts": "soon"}).status_code == 422
    view = client.get("/v1/users/never-seen").json()
    assert view["history"] == [] and view["accepted"] == [] and view["stage"] is None
