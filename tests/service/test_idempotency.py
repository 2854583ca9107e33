"""Idempotency-Key: byte-identical replays, 409 on reuse with another body, one effect under
races, survival across restarts, pruning; and the one-outcome-per-decision race."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service import flows
from service.flows import serve_keyed_next_step
from service.problems import Conflict
from service.schemas import DecisionOutcomeRequest, NextStepRequest
from service.tables import decisions, idempotency, outcomes
from tests.service.helpers import decide


def _count(client: TestClient, table: Any) -> int:
    store = client.app.state.store
    with store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.mark.parametrize("route", ["/v1/next-step", "/v1/outcomes"])
def test_replay_is_byte_identical_and_has_one_effect(client: TestClient, route: str) -> None:
    if route == "/v1/next-step":
        body: dict[str, Any] = {"user_id": "i1", "context": {"a": 1}}
        table = decisions
    else:
        body = {"user_id": "i1", "step": "read_intro", "outcome": "accepted"}
        table = outcomes
    before = _count(client, table)
    h = {"Idempotency-Key": "key-1"}
    first = client.post(route, json=body, headers=h)
    assert first.status_code in (200, 201)
    second = client.post(route, json=body, headers=h)
    assert second.status_code == first.status_code
    assert second.content == first.content
    assert second.headers.get("idempotent-replayed") == "true"
    assert _count(client, table) == before + 1
    # the same body without the key is a new request
    third = client.post(route, json=body)
    if route == "/v1/next-step":
        assert third.json()["decision_id"] != first.json()["decision_id"]


def test_equivalent_spellings_replay_different_body_conflicts(client: TestClient) -> None:
    h = {"Idempotency-Key": "k2"}
    a = client.post(
        "/v1/next-step", json={"user_id": "i2", "ts": "2025-03-04T10:11:12Z"}, headers=h
    )
    b = client.post("/v1/next-step", json={"ts": 1741083072, "user_id": "i2"}, headers=h)
    assert b.content == a.content  # same request: key order and ts spelling do not matter
    c = client.post("/v1/next-step", json={"user_id": "i3"}, headers=h)
    assert c.status_code == 409
    assert c.headers["content-type"].startswith("application/problem+json")
    assert "Idempotency-Key" in c.json()["detail"]


def test_keys_are_per_route(client: TestClient) -> None:
    h = {"Idempotency-Key": "shared"}
    d = client.post("/v1/next-step", json={"user_id": "i4"}, headers=h).json()
    r = client.post(
        "/v1/outcomes", json={"decision_id": d["decision_id"], "outcome": "accepted"}, headers=h
    )
    assert r.status_code == 201


def test_failed_requests_are_not_remembered(client: TestClient) -> None:
    h = {"Idempotency-Key": "k5"}
    r = client.post(
        "/v1/outcomes", json={"decision_id": "f" * 32, "outcome": "accepted"}, headers=h
    )
    assert r.status_code == 404
    d = decide(client, "i5")
    r = client.post(
        "/v1/outcomes", json={"decision_id": d["decision_id"], "outcome": "accepted"}, headers=h
    )
    assert r.status_code == 201


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "tab\there"])
def test_bad_keys_are_422(client: TestClient, key: str) -> None:
    r = client.post("/v1/next-step", json={"user_id": "i6"}, headers={"Idempotency-Key": key})
    assert r.status_code == 422


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/next-step", {"user_id": "i7"}),
        ("/v1/next-step:batch", {"requests": [{"user_id": "i7"}, {"user_id": "i7b"}]}),
    ],
)
def test_replay_survives_a_restart(
    make_client: Callable[..., TestClient], route: str, body: dict[str, Any]
) -> None:
    c1 = make_client()
    h = {"Idempotency-Key": "restart"}
    first = c1.post(route, json=body, headers=h)
    assert first.status_code == 200
    c1.__exit__(None, None, None)
    c2 = make_client()
    again = c2.post(route, json=body, headers=h)
    assert again.content == first.content
    assert again.headers.get("idempotent-replayed") == "true"


# -- next-step:batch ----------------------------------------------------------------------------
def test_batch_replay_is_byte_identical_and_decides_once(client: TestClient) -> None:
    batch = {
        "requests": [
            {"user_id": "b1", "context": {"channel": "email"}, "ts": "2025-03-04T10:11:12Z"},
            {"user_id": "b2", "candidates": ["no_such_step"]},  # answered by a 422 item
            {"user_id": "b3"},
        ]
    }
    before, keys_before = _count(client, decisions), _count(client, idempotency)
    h = {"Idempotency-Key": "batch-1"}
    first = client.post("/v1/next-step:batch", json=batch, headers=h)
    assert first.status_code == 200
    answers = first.json()["responses"]
    assert [a.get("status") for a in answers] == [None, 422, None]
    assert _count(client, decisions) == before + 2
    again = client.post("/v1/next-step:batch", json=batch, headers=h)
    assert again.status_code == 200 and again.content == first.content
    assert again.headers.get("idempotent-replayed") == "true"
    assert "idempotent-replayed" not in first.headers
    respelled = {  # key order and the ts spelling do not make another batch
        "requests": [
            {"ts": 1741083072, "context": {"channel": "email"}, "user_id": "b1"},
            {"candidates": ["no_such_step"], "user_id": "b2"},
            {"user_id": "b3", "explain": False},
        ]
    }
    assert client.post("/v1/next-step:batch", json=respelled, headers=h).content == first.content
    assert _count(client, decisions) == before + 2  # nothing decided again
    assert _count(client, idempotency) == keys_before + 1
    other = client.post("/v1/next-step:batch", json={"requests": [{"user_id": "b1"}]}, headers=h)
    assert other.status_code == 409
    assert other.headers["content-type"].startswith("application/problem+json")
    assert "Idempotency-Key" in other.json()["detail"]
    # without a key the same batch is new decisions, and nothing is remembered
    fresh = client.post("/v1/next-step:batch", json=batch)
    assert fresh.json()["responses"][0]["decision_id"] != answers[0]["decision_id"]
    assert _count(client, decisions) == before + 4
    assert _count(client, idempotency) == keys_before + 1


def test_batch_and_next_step_keys_are_separate(client: TestClient) -> None:
    h = {"Idempotency-Key": "both"}
    one = client.post("/v1/next-step", json={"user_id": "s1"}, headers=h)
    many = client.post("/v1/next-step:batch", json={"requests": [{"user_id": "s1"}]}, headers=h)
    assert one.status_code == many.status_code == 200
    assert many.json()["responses"][0]["decision_id"] != one.json()["decision_id"]


@pytest.mark.parametrize("key", ["", "x" * 256, "has space"])
def test_bad_batch_keys_are_422(client: TestClient, key: str) -> None:
    r = client.post(
        "/v1/next-step:batch",
        json={"requests": [{"user_id": "s2"}]},
        headers={"Idempotency-Key": key},
    )
    assert r.status_code == 422


def test_expired_keys_are_pruned(client: TestClient) -> None:
    store = client.app.state.store
    client.post("/v1/next-step", json={"user_id": "i8"}, headers={"Idempotency-Key": "old"})
    with store.write() as conn:
        conn.execute(idempotency.update().values(created_at=time.time() - 25 * 3600))
    client.post("/v1/next-step", json={"user_id": "i8"}, headers={"Idempotency-Key": "new"})
    assert store.prune_idempotency(24 * 3600) == 1
    with store.read() as conn:
        assert store.idempotent("old", flows.ROUTE_NEXT_STEP, conn) is None
        assert store.idempotent("new", flows.ROUTE_NEXT_STEP, conn) is not None


# -- races (directly on the flows, 16 threads released together) ------------------------------
def _race(n: int, fn: Callable[[int], Any]) -> list[Any]:
    barrier = threading.Barrier(n)

    def run(i: int) -> Any:
        barrier.wait()
        try:
            return fn(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_concurrent_retries_with_one_key_have_one_effect(client: TestClient) -> None:
    app = client.app
    store, deciders = app.state.store, app.state.runtime.current
    req = NextStepRequest(user_id="race1")
    before = _count(client, decisions)

    async def retries() -> list[Any]:  # 16 concurrent retries: one commit group on SQLite
        return await asyncio.gather(
            *(
                serve_keyed_next_step(store, deciders, None, app.state.planning, req, "rk")
                for _ in range(16)
            ),
            return_exceptions=True,
        )

    replies = asyncio.run(retries())
    assert all(isinstance(r, flows.Reply) for r in replies), replies
    assert len({r.body for r in replies}) == 1
    assert sum(not r.replayed for r in replies) == 1  # one decision, fifteen replays of it
    assert _count(client, decisions) == before + 1
    with store.read() as conn:
        assert store.idempotent("rk", flows.ROUTE_NEXT_STEP, conn).body == replies[0].body

    d = decide(client, "race2")
    oreq = DecisionOutcomeRequest(decision_id=d["decision_id"], outcome="accepted")
    cat = app.state.catalog
    replies = _race(16, lambda i: flows.record_outcome(store, cat, oreq, idempotency_key="ok"))
    assert all(isinstance(r, flows.Reply) and r.status == 201 for r in replies), replies
    assert len({r.body for r in replies}) == 1


def test_concurrent_batch_retries_with_one_key_have_one_effect(client: TestClient) -> None:
    app = client.app
    store, deciders = app.state.store, app.state.runtime.current
    requests = [NextStepRequest(user_id=f"race-b{i}") for i in range(20)]
    before = _count(client, decisions)
    replies = _race(
        8,
        lambda i: flows.next_step_batch(store, deciders, requests, idempotency_key="brk"),
    )
    assert all(isinstance(r, flows.Reply) and r.status == 200 for r in replies), replies
    assert len({r.body for r in replies}) == 1
    assert sum(not r.replayed for r in replies) == 1  # one batch decided, seven replays of it
    assert _count(client, decisions) == before + 20


def test_concurrent_different_outcomes_exactly_one_wins(client: TestClient) -> None:
    app = client.app
    store, cat = app.state.store, app.state.catalog
    results = ["accepted", "declined", "dropped"]
    for trial in range(3):
        d = decide(client, f"race-o{trial}")
        replies = _race(
            12,
            lambda i, d=d: flows.record_outcome(
                store,
                cat,
                DecisionOutcomeRequest(decision_id=d["decision_id"], outcome=results[i % 3]),
            ),
        )
        wins = [r for r in replies if isinstance(r, flows.Reply)]
        conflicts = [r for r in replies if isinstance(r, Conflict)]
        assert len(wins) + len(conflicts) == 12, replies
        assert len({w.body for w in wins}) == 1  # identical repeats of the winner get its record
        with store.read() as conn:
            assert store.outcome_of(conn, d["decision_id"]) is not None
