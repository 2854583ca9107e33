"""The next-step fast lane answers exactly as the route would, and only when it may.

Each test runs two apps side by side on their own stores: the real one and one built without
the lane (so every request goes through FastAPI's route). Their answers must be equal, apart
from the random decision id, and a spy on the lane says which requests it served.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.app import create_app
from service.fast_lane import NextStepLane
from service.settings import Settings
from service.store import StoreUnavailable
from tests.service.helpers import fake_factory

PROBS = {"read_intro": 0.4, "watch_clip": 0.7, "create_account": 0.2}


@pytest.fixture
def pair(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> Iterator[Callable[..., tuple[TestClient, TestClient]]]:
    """``(with lane, route only)``: two apps with the same settings, each on its own store."""
    clients: list[TestClient] = []

    def make(**overrides: Any) -> tuple[TestClient, TestClient]:
        made = []
        for name in ("lane", "route"):
            db = f"sqlite:///{tmp_path / name / 'service.db'}"
            app = create_app(
                make_settings(db, policy="greedy", **overrides),
                decider_factory=fake_factory("7", PROBS),
            )
            if name == "route":  # the same stack without the lane in front
                app.build_middleware_stack = lambda app=app: FastAPI.build_middleware_stack(app)
            client = TestClient(app, raise_server_exceptions=False)
            client.__enter__()
            clients.append(client)
            made.append(client)
        return made[0], made[1]

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def _same(a: Any, b: Any) -> None:
    assert (a.status_code, a.headers["content-type"]) == (b.status_code, b.headers["content-type"])
    ja, jb = a.json(), b.json()
    if isinstance(ja, dict):
        ja.pop("decision_id", None)
        jb.pop("decision_id", None)
    assert ja == jb


VALID = [
    {"user_id": "u1"},
    {"user_id": "u1", "context": {"channel": "email", "device": "mobile"}},
    {"user_id": "u2", "ts": "2025-03-04T10:11:12Z", "context": {"n": 3, "x": 1.5, "ok": True}},
    {"user_id": "u3", "ts": 1_700_000_000.25, "candidates": ["watch_clip", "create_account"]},
    {"user_id": "u4", "explain": False, "candidates": None},
    {"user_id": "ü-ñ 5", "context": {"channel": None}},
]


def test_lane_answers_valid_requests_exactly_as_the_route(pair: Any, served: list[int]) -> None:
    lane, route = pair()
    for body in VALID * 2:  # twice: the second round has a history to fold
        a = lane.post("/v1/next-step", json=body)
        assert len(served) > 0 and a.status_code == 200, a.text
        _same(a, route.post("/v1/next-step", json=body))
    assert len(served) == 2 * len(VALID)
    # what the lane stored is what the route stores: the user views agree
    for user in ("u1", "u3", "ü-ñ 5"):
        _same(lane.get(f"/v1/users/{user}"), route.get(f"/v1/users/{user}"))


BAD = [
    pytest.param(b'{"user_id": ""}', {}, 422, id="schema"),
    pytest.param(b'{"user_id": "u", "extra": 1}', {}, 422, id="extra-field"),
    pytest.param(b'{"user_id": "u", "explain": "true"}', {}, 422, id="strict-bool"),
    pytest.param(b'{"user_id": "u",', {}, 400, id="malformed-json"),
    pytest.param(b'{"user_id": NaN}', {}, 422, id="nan-literal"),
    pytest.param(b"[1, 2]", {}, 422, id="not-an-object"),
    pytest.param(b"", {}, 422, id="empty"),
    pytest.param(b'{"user_id": "u"}', {"content-type": "text/plain"}, 415, id="media-type"),
    pytest.param(b'{"user_id": "u", "candidates": ["nope"]}', {}, 422, id="unknown-candidate"),
]


@pytest.mark.parametrize(("body", "headers", "status"), BAD)
def test_requests_the_lane_does_not_take_get_the_routes_answer(
    pair: Any, served: list[int], body: bytes, headers: dict[str, str], status: int
) -> None:
    lane, route = pair()
    h = {"content-type": "application/json", **headers}
    a = lane.post("/v1/next-step", content=body, headers=h)
    assert a.status_code == status, a.text
    assert a.headers["content-type"] == "application/problem+json"
    _same(a, route.post("/v1/next-step", content=body, headers=h))
    # only a request the route accepts reaches the lane's decision (its error comes from the
    # route's own handler: the unknown candidate is found while deciding)
    assert len(served) == (1 if "nope" in body.decode() else 0)


def test_keyed_requests_replay_and_conflict_as_through_the_route(
    pair: Any, served: list[int]
) -> None:
    lane, route = pair()
    steps = [
        ({"user_id": "u"}, {"Idempotency-Key": "k-1"}, 200),
        ({"user_id": "u"}, {"Idempotency-Key": "k-1"}, 200),  # a replay, byte for byte
        ({"user_id": "u", "context": {"c": 1}}, {"Idempotency-Key": "k-1"}, 409),  # other body
        ({"user_id": "u"}, {"Idempotency-Key": "k-2"}, 200),
    ]
    first: dict[str, bytes] = {}
    for body, headers, status in steps:
        a = lane.post("/v1/next-step", json=body, headers=headers)
        b = route.post("/v1/next-step", json=body, headers=headers)
        assert a.status_code == b.status_code == status, a.text
        assert a.headers.get("Idempotent-Replayed") == b.headers.get("Idempotent-Replayed")
        if status == 200:
            key = headers["Idempotency-Key"]
            if key in first:
                assert a.headers["Idempotent-Replayed"] == "true"
                assert a.content == first[key]
            first.setdefault(key, a.content)
        _same(a, b)
    assert len(served) == len(steps)
    with lane.app.state.store.read() as conn:  # the key's record holds the first response
        rec = lane.app.state.store.idempotent("k-1", "next-step", conn)
    assert rec is not None and rec.body == first["k-1"]


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "tab\there"])
def test_malformed_keys_get_the_routes_422(pair: Any, served: list[int], key: str) -> None:
    lane, route = pair()
    a = lane.post("/v1/next-step", json={"user_id": "u"}, headers={"Idempotency-Key": key})
    assert a.status_code == 422
    _same(a, route.post("/v1/next-step", json={"user_id": "u"}, headers={"Idempotency-Key": key}))
    assert served == []


def test_a_wrong_api_key_gets_the_routes_401(pair: Any, served: list[int]) -> None:
    lane, route = pair(api_keys="k3y-good-123456")
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}):
        a = lane.post("/v1/next-step", json={"user_id": "u"}, headers=headers)
        assert a.status_code == 401
        _same(a, route.post("/v1/next-step", json={"user_id": "u"}, headers=headers))
    ok = lane.post("/v1/next-step", json={"user_id": "u"}, headers={"X-API-Key": "k3y-good-123456"})
    assert ok.status_code == 200
    assert len(served) == 1  # only the request with the right key reached the lane's decision


@pytest.mark.parametrize(("body", "headers", "status"), BAD)
def test_a_wrong_key_with_any_body_gets_the_routes_answer(
    pair: Any, served: list[int], body: bytes, headers: dict[str, str], status: int
) -> None:
    """Whatever the body, a request with a wrong key is answered as the route answers it (401,
    or the route's 400 for malformed JSON, which FastAPI finds before the key check)."""
    lane, route = pair(api_keys="k3y-good-123456")
    h = {"content-type": "application/json", "X-API-Key": "wrong", **headers}
    a = lane.post("/v1/next-step", content=body, headers=h)
    assert a.status_code in (400, 401, 415), a.text
    _same(a, route.post("/v1/next-step", content=body, headers=h))
    assert served == []


@pytest.mark.parametrize("key", [None, "", "wrong", "k3y-good-123456"])
def test_the_lane_reads_no_body_without_the_right_key(pair: Any, key: str | None) -> None:
    """With keys configured, the lane checks the key before it reads a byte of the body: a
    request without the right key goes down the normal path with its ``receive`` untouched, so
    no unauthenticated body is read or parsed by the lane."""
    lane_client, _ = pair(api_keys="k3y-good-123456")
    body = orjson.dumps({"user_id": "u"})
    reads: list[int] = []
    passed_on: list[Any] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        reads.append(1)
        return {"type": "http.request", "body": body, "more_body": False}

    async def rest_of_the_stack(scope: Any, rcv: Any, snd: Any) -> None:
        passed_on.append(rcv)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if key is not None:
        headers.append((b"x-api-key", key.encode()))
    scope = {"type": "http", "method": "POST", "path": "/v1/next-step", "headers": headers}
    lane = NextStepLane(rest_of_the_stack, fastapi_app=lane_client.app)
    anyio.run(lane, scope, receive, send)
    if key == "k3y-good-123456":  # the control: the right key is read and served by the lane
        assert reads and passed_on == [] and sent[0]["status"] == 200
    else:
        assert reads == [] and sent == []
        assert passed_on == [receive]  # the original receive, not a replay of a read body


def test_store_errors_are_rendered_by_the_apps_handlers(
    pair: Any, served: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    lane, route = pair()
    for client in (lane, route):

        def down(user_id: str) -> None:
            raise StoreUnavailable("store unavailable (OperationalError)")

        monkeypatch.setattr(client.app.state.store, "read_state_row", down)
    a = lane.post("/v1/next-step", json={"user_id": "u"})
    assert a.status_code == 503 and a.headers["retry-after"] == "1"
    _same(a, route.post("/v1/next-step", json={"user_id": "u"}))
    assert len(served) == 1


def test_lane_requests_are_counted_in_the_route_series(pair: Any, served: list[int]) -> None:
    lane, _ = pair()
    for _ in range(3):
        lane.post("/v1/next-step", json={"user_id": "m"})
    lane.post("/v1/next-step", json={"user_id": "m", "candidates": ["nope"]})
    text = lane.get("/metrics").text
    line = 'nextstep_http_requests_total{method="POST",route="/v1/next-step",status="%s"}'
    assert f"{line % 200} 3.0" in text
    assert f"{line % 422} 1.0" in text
    assert 'nextstep_http_request_seconds_count{method="POST",route="/v1/next-step"} 4.0' in text
    assert len(served) == 4


def test_an_oversized_body_is_refused_by_the_guard(pair: Any, served: list[int]) -> None:
    lane, _ = pair(max_body_bytes=1024)
    body = orjson.dumps({"user_id": "u", "context": {"pad": "x" * 2000}})
    r = lane.post("/v1/next-step", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert served == []
