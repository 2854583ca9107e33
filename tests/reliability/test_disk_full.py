"""Disk full (issue 9 item 3): the SQLite store cannot grow (``PRAGMA max_page_count`` pinned
to the file's current size on every connection, so SQLite answers ``SQLITE_FULL`` exactly as on
a full disk, without filling a real filesystem). Writes get a clear 503 problem+json with
``Retry-After``, never a 500; nothing is half-written (no decision without its idempotency
record, no partial batch, no outcome); everything acknowledged before stays intact; and the
service recovers by itself once there is room again."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from service.store import Store
from service.tables import decisions, idempotency, outcomes
from tests.reliability.conftest import assert_clean_problem

TS = 1_741_083_072.0


def _counts(url: str) -> tuple[int, int, int]:
    store = Store(url)
    try:
        with store.read() as conn:
            return tuple(  # type: ignore[return-value]
                int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                for t in (decisions, outcomes, idempotency)
            )
    finally:
        store.dispose()


def _big_context(i: int) -> dict[str, Any]:
    return {f"k{j}": f"{i}-{j}-" + "x" * 200 for j in range(8)}  # ~2 KB: needs new pages


def test_disk_full_is_503_nothing_half_written_and_recovers(make_client: Any) -> None:
    client: TestClient = make_client()
    store: Store = client.app.state.store
    url = store.url
    acked: list[tuple[str, str | None]] = []
    for i in range(20):
        r = client.post(
            "/v1/next-step",
            json={"user_id": f"full-{i}", "ts": TS, "context": {"i": i}},
            headers={"Idempotency-Key": f"before-{i}"},
        )
        assert r.status_code == 200
        did = r.json()["decision_id"]
        o = client.post("/v1/outcomes", json={"decision_id": did, "outcome": "declined"})
        assert o.status_code == 201
        acked.append((did, "declined"))

    def pin_size(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        n = cur.execute("PRAGMA page_count").fetchone()[0]
        cur.execute(f"PRAGMA max_page_count={n}")
        cur.close()

    pending = [
        client.post("/v1/next-step", json={"user_id": f"pending-{i}"}).json()["decision_id"]
        for i in range(100)
    ]
    event.listen(store.engine, "connect", pin_size)
    store.engine.dispose()  # every connection from now on sees a full disk
    try:
        statuses: list[int] = []
        for i in range(200):
            before = _counts(url)
            r = client.post(
                "/v1/next-step",
                json={"user_id": f"while-full-{i}", "ts": TS, "context": _big_context(i)},
                headers={"Idempotency-Key": f"full-{i}"},
            )
            statuses.append(r.status_code)
            if r.status_code == 503:
                break
            assert r.status_code == 200, r.text  # a write that still fitted in a free page
        assert statuses[-1] == 503, statuses
        failed_key = f"full-{len(statuses) - 1}"
        body = assert_clean_problem(r, 503)
        assert r.headers["retry-after"] == "1" and "store" in body["detail"]
        assert _counts(url) == before  # no decision, no idempotency record

        # a batch is one transaction: all of it or none of it
        before = _counts(url)
        r = client.post(
            "/v1/next-step:batch",
            json={
                "requests": [{"user_id": f"b{i}", "context": _big_context(i)} for i in range(50)]
            },
        )
        assert_clean_problem(r, 503)
        assert _counts(url) == before

        # outcomes: refused whole, not half-recorded
        before = _counts(url)
        r = client.post(
            "/v1/outcomes",
            json={
                "user_id": "organic",
                "step": "watch_clip",
                "outcome": "accepted",
                "context": _big_context(0),
            },
        )
        assert r.status_code in (201, 503), r.text  # 201 if it still fitted in a free slot
        if r.status_code == 503:
            assert_clean_problem(r, 503)
            assert _counts(url) == before
        for did in pending:  # fill the last free slots with small outcomes until it is full
            r = client.post("/v1/outcomes", json={"decision_id": did, "outcome": "accepted"})
            if r.status_code == 503:
                break
            assert r.status_code == 201, r.text
        assert_clean_problem(r, 503)
        with store.read() as conn:
            assert store.outcome_of(conn, did) is None
        # reads keep working while full
        assert client.get("/v1/users/full-3").status_code == 200
        assert client.get("/healthz").status_code == 200
    finally:
        event.remove(store.engine, "connect", pin_size)
        store.engine.dispose()

    # room again: the service recovers without a restart, and nothing acknowledged was lost
    check = Store(url)
    try:
        with check.read() as conn:
            for did, result in acked:
                assert check.get_decision(conn, did) is not None
                assert check.outcome_of(conn, did).outcome == result  # type: ignore[union-attr]
            assert check.idempotent(failed_key, "next-step", conn) is None
    finally:
        check.dispose()
    r = client.post(
        "/v1/next-step",
        json={"user_id": "after-full", "context": _big_context(1)},
        headers={"Idempotency-Key": failed_key},  # the failed attempt was not remembered
    )
    assert r.status_code == 200, r.text
    assert r.json()["user_id"] == "after-full"
