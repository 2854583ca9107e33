"""The store: schema and pragmas, migrations, history order, and failures as 503 (never 500)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect

from service.store import Store, StoreUnavailable
from tests.service.helpers import decide, outcome

TS = 1_741_083_072.0


def test_migrations_are_idempotent_and_create_the_tables(db_url: str) -> None:
    store = Store(db_url)
    try:
        store.migrate()
        store.migrate()
        names = set(inspect(store.engine).get_table_names())
        assert {"decisions", "outcomes", "idempotency", "alembic_version"} <= names
        cols = {c["name"] for c in inspect(store.engine).get_columns("decisions")}
        assert {"decision_id", "user_id", "ts", "arm", "policy", "model_version", "propensity",
                "explored", "p_accept", "context", "candidates", "reason"} <= cols  # fmt: skip
    finally:
        store.dispose()


def test_sqlite_runs_in_wal_with_full_sync(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    try:
        with store.read() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        store.dispose()


def test_history_is_ordered_by_ts_not_arrival(client: TestClient) -> None:
    late = decide(client, "h1", ts=TS + 100)
    early = decide(client, "h1", ts=TS)
    outcome(client, late["decision_id"], "declined")
    outcome(client, early["decision_id"], "accepted")
    r = client.post(
        "/v1/outcomes",
        json={"user_id": "h1", "step": "watch_clip", "outcome": "accepted", "ts": TS + 50,
              "context": {"channel": "web"}},
    )  # fmt: skip
    assert r.status_code == 201 and r.json()["decision_id"] is None
    hist = client.get("/v1/users/h1").json()["history"]
    assert [(h["decision_id"], h["step"], h["outcome"]) for h in hist] == [
        (early["decision_id"], "read_intro", "accepted"),
        (None, "watch_clip", "accepted"),
        (late["decision_id"], "read_intro", "declined"),
    ]
    store = client.app.state.store
    with store.read() as conn:
        events = store.history("h1", conn)
    assert events[1].context == {"channel": "web"}  # organic context is kept


def _break(client: TestClient, tmp_path: Path) -> None:
    """Point the running app at a store whose directory has vanished."""
    gone = tmp_path / "gone"
    broken = Store(f"sqlite:///{gone / 'x.db'}")
    shutil.rmtree(gone)
    client.app.state.store = broken


def test_store_down_is_503_with_retry_after(client: TestClient, tmp_path: Path) -> None:
    _break(client, tmp_path)
    calls = [
        ("POST", "/v1/next-step", {"user_id": "d1"}),
        ("POST", "/v1/next-step:batch", {"requests": [{"user_id": "d1"}]}),
        ("POST", "/v1/outcomes", {"user_id": "d1", "step": "read_intro", "outcome": "accepted"}),
        ("GET", "/v1/users/d1", None),
        ("GET", "/readyz", None),
    ]
    for method, path, body in calls:
        r = client.request(method, path, json=body)
        assert r.status_code == 503, (path, r.text)
        assert r.headers["retry-after"] == "1"
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "Traceback" not in r.text and "sqlite3" not in r.text.lower().replace(
            "operationalerror", ""
        )
    assert client.get("/healthz").status_code == 200
    assert "nextstep_store_errors_total 4.0" in client.get("/metrics").text


def test_read_only_store_refuses_writes_cleanly(
    make_settings: Callable[..., object], sqlite_url: str
) -> None:
    from service.app import create_app

    with TestClient(create_app(make_settings(sqlite_url))) as client:  # type: ignore[arg-type]
        _read_only_checks(client, sqlite_url)


def _read_only_checks(client: TestClient, sqlite_url: str) -> None:
    d = decide(client, "ro", ts=TS)
    path = sqlite_url.removeprefix("sqlite:///")
    client.app.state.store = Store(f"sqlite:///file:{path}?mode=ro&uri=true")
    assert client.get("/v1/users/ro").status_code == 200  # reads still work
    r = client.post("/v1/outcomes", json={"decision_id": d["decision_id"], "outcome": "accepted"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    r = client.post("/v1/next-step", json={"user_id": "ro"}, headers={"Idempotency-Key": "k"})
    assert r.status_code == 503
    store = Store(sqlite_url)
    with store.read() as conn:  # nothing half-written
        assert store.outcome_of(conn, d["decision_id"]) is None
        assert store.idempotent("k", "next-step", conn) is None
    store.dispose()


def test_store_rejects_in_memory_sqlite() -> None:
    with pytest.raises(ValueError, match="file"):
        Store("sqlite://")


@pytest.mark.postgres
@pytest.mark.xdist_group("postgres")
def test_postgres_outage_is_503_and_recovers(make_settings: Callable[..., object]) -> None:
    """Stop PostgreSQL while serving: 503 + Retry-After, never 500; back when it is back."""
    from service.app import create_app
    from tests.conftest import PostgresServer

    server = PostgresServer()
    try:
        with TestClient(create_app(make_settings(server.url))) as client:  # type: ignore[arg-type]
            d = decide(client, "pg1")
            server.stop()
            for _ in range(3):
                r = client.post("/v1/next-step", json={"user_id": "pg1"})
                assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
            r = client.post(
                "/v1/outcomes", json={"decision_id": d["decision_id"], "outcome": "accepted"}
            )
            assert r.status_code == 503
            assert client.get("/readyz").status_code == 503
            server.start()
            assert client.get("/readyz").status_code == 200
            outcome(client, d["decision_id"], "accepted")
            assert decide(client, "pg1")["step"] != "read_intro"
    finally:
        server.destroy()


def test_store_unavailable_is_a_nextstep_error() -> None:
    from features.errors import NextstepError

    assert issubclass(StoreUnavailable, NextstepError)
