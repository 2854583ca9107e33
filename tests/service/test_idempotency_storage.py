"""Idempotency records are bounded: a large response is stored compressed, one too large even
then is not kept (its retry is 409, not a replay), and a small one is stored as it was sent."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service import store as store_module
from service.tables import decisions, idempotency


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


def _stored(client: TestClient, key: str) -> bytes:
    with client.app.state.store.read() as conn:
        return bytes(
            conn.execute(select(idempotency.c.body).where(idempotency.c.key == key)).one()[0]
        )


def test_a_large_batch_response_is_stored_compressed_and_replayed_exactly(
    make_client: Callable[..., TestClient],
) -> None:
    c = make_client()
    body = {
        "requests": [{"user_id": f"big-{i}", "context": {"channel": "email"}} for i in range(1000)]
    }
    first = c.post("/v1/next-step:batch", json=body, headers={"Idempotency-Key": "big"})
    assert first.status_code == 200 and len(first.content) > 100_000
    kept = _stored(c, "big")
    assert kept[:1] == b"x" and len(kept) < len(first.content) / 4
    again = c.post("/v1/next-step:batch", json=body, headers={"Idempotency-Key": "big"})
    assert again.content == first.content and again.headers["Idempotent-Replayed"] == "true"


def test_a_small_response_is_stored_as_sent(make_client: Callable[..., TestClient]) -> None:
    c = make_client()
    r = c.post("/v1/next-step", json={"user_id": "small"}, headers={"Idempotency-Key": "s"})
    assert _stored(c, "s") == r.content


def test_a_response_too_large_to_keep_is_409_on_retry(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "IDEMPOTENT_MAX_STORED", 1000)
    c = make_client()
    body = {"requests": [{"user_id": f"huge-{i}", "context": {"n": i}} for i in range(300)]}
    first = c.post("/v1/next-step:batch", json=body, headers={"Idempotency-Key": "huge"})
    assert first.status_code == 200
    assert _stored(c, "huge") == b""
    again = c.post("/v1/next-step:batch", json=body, headers={"Idempotency-Key": "huge"})
    assert again.status_code == 409 and "too large to keep" in again.json()["detail"]
    with c.app.state.store.read() as conn:  # nothing was decided twice
        n = len(conn.execute(select(decisions.c.decision_id)).all())
    assert n == 300
