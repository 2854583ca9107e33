"""Declared context keys: with ``NEXTSTEP_CONTEXT_KEYS`` set, a request naming any other key is
refused with 422 naming it (next-step on the fast lane and the route, batch items, organic
outcomes), and nothing is stored; unset, any key is accepted as before."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.tables import decisions, outcomes


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


def _count(c: TestClient, table: object) -> int:
    with c.app.state.store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/v1/next-step", {"user_id": "u", "context": {"channel": "x", "evil": 1}}, None),
        (
            "/v1/next-step:batch",
            {"requests": [{"user_id": "a"}, {"user_id": "b", "context": {"evil": 1}}]},
            ["body", "requests", 1, "context", "evil"],
        ),
        (
            "/v1/outcomes",
            {"user_id": "u", "step": "read_intro", "outcome": "declined", "context": {"evil": 1}},
            ["body", "context", "evil"],
        ),
    ],
)
def test_an_undeclared_context_key_is_422_naming_it(
    make_client: Callable[..., TestClient], path: str, body: dict, loc: list | None
) -> None:
    c = make_client(context_keys="channel, plan")
    r = c.post(path, json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "'evil'" in r.json()["detail"]
    if loc is not None:
        assert r.json()["errors"][0]["loc"] == loc
    assert _count(c, decisions) == 0 and _count(c, outcomes) == 0


def test_the_route_refuses_it_too(make_client: Callable[..., TestClient]) -> None:
    """A body the fast lane leaves to the route (a streamed one) meets the same rule."""
    c = make_client(context_keys="channel")

    def chunks():
        yield b'{"user_id": "u", "context": {"evil": 1}}'

    r = c.post("/v1/next-step", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 422 and "'evil'" in r.json()["detail"]


def test_declared_keys_pass_and_unset_accepts_any(
    make_client: Callable[..., TestClient],
) -> None:
    c = make_client(context_keys="channel,plan")
    ok = c.post("/v1/next-step", json={"user_id": "u", "context": {"channel": "x", "plan": 1}})
    assert ok.status_code == 200
    open_ = make_client()
    assert (
        open_.post("/v1/next-step", json={"user_id": "v", "context": {"any": 1}}).status_code == 200
    )
