"""Races over real HTTP (issue 9 item 2), on the real server (uvicorn, SQLite and PostgreSQL):
``tests/service/test_idempotency.py`` races the flows in-process; here 16 clients released by a
barrier hit ``nextstep serve`` over sockets.

* many concurrent, different outcomes for one decision: exactly one outcome wins; every request
  carrying the winning outcome gets 201 with the same record, every other one 409 problem+json;
* many concurrent retries with one ``Idempotency-Key``: one decision stored, identical bytes;
  the same for a keyed ``next-step:batch`` (one decision per user of the batch).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from service.store import Store
from service.tables import decisions
from tests.service.helpers import ServerProcess

pytestmark = pytest.mark.e2e
THREADS = 16
TRIALS = 4
RESULTS = ("accepted", "declined", "dropped")


def _race(base: str, n: int, call: Any) -> list[httpx.Response]:
    barrier = threading.Barrier(n)

    def run(i: int) -> httpx.Response:
        with httpx.Client(base_url=base, timeout=60) as http:
            http.get("/healthz")  # connect before the barrier: the race is on the request
            barrier.wait()
            return call(http, i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def _keyed_race(base: str, route: str, body: dict[str, Any], key: str) -> None:
    """``THREADS`` concurrent retries of one keyed request: all 200 with identical bytes, and
    exactly one of them is not a replay (the one whose decisions were stored)."""
    replies = _race(
        base, THREADS, lambda c, i: c.post(route, json=body, headers={"Idempotency-Key": key})
    )
    assert {r.status_code for r in replies} == {200}, [r.text for r in replies]
    assert len({r.content for r in replies}) == 1
    assert sum(r.headers.get("idempotent-replayed") != "true" for r in replies) == 1


def _races(tmp_path: Path, catalog_path: Path, db_url: str | None) -> int:
    env = {"NEXTSTEP_HOME": str(tmp_path / "home"), "NEXTSTEP_LOG_LEVEL": "WARNING"}
    if db_url:
        env["NEXTSTEP_DATABASE_URL"] = db_url
    server = ServerProcess(tmp_path, catalog_path, **env)
    tried = 0
    try:
        server.wait_ready()
        http = httpx.Client(base_url=server.base, timeout=60)
        for trial in range(TRIALS):
            d = http.post("/v1/next-step", json={"user_id": f"race-{trial}"}).json()
            assert d["step"] is not None
            did = d["decision_id"]
            replies = _race(
                server.base,
                THREADS,
                lambda c, i, did=did: c.post(
                    "/v1/outcomes", json={"decision_id": did, "outcome": RESULTS[i % 3]}
                ),
            )
            tried += 1
            wins = [(i, r) for i, r in enumerate(replies) if r.status_code == 201]
            assert wins, [r.status_code for r in replies]
            winner = wins[0][1].json()["outcome"]
            for i, r in enumerate(replies):
                if RESULTS[i % 3] == winner:
                    assert r.status_code == 201 and r.content == wins[0][1].content, r.text
                else:
                    assert r.status_code == 409, (r.status_code, r.text)
                    assert r.headers["content-type"].startswith("application/problem+json")

            key = f"same-key-{trial}"
            body = {"user_id": f"idem-{trial}", "context": {"trial": trial}}
            _keyed_race(server.base, "/v1/next-step", body, key)
            batch = {"requests": [{"user_id": f"idem-b{trial}-{u}"} for u in range(5)]}
            _keyed_race(server.base, "/v1/next-step:batch", batch, key)
            tried += 2
        http.close()
    finally:
        server.stop()
    store = Store(db_url or f"sqlite:///{tmp_path / 'home' / 'service.db'}")
    try:
        with store.read() as conn:
            for trial in range(TRIALS):  # one effect: one decision per user of each race
                for user in [f"idem-{trial}", *(f"idem-b{trial}-{u}" for u in range(5))]:
                    found = conn.execute(
                        select(decisions.c.decision_id).where(decisions.c.user_id == user)
                    ).all()
                    assert len(found) == 1, (user, len(found))
    finally:
        store.dispose()
    print(f"http races tried: {tried} x {THREADS} threads")
    return tried


def test_http_races_sqlite(tmp_path: Path, catalog_path: Path) -> None:
    assert _races(tmp_path, catalog_path, None) == 3 * TRIALS


@pytest.mark.postgres
@pytest.mark.xdist_group("postgres")
def test_http_races_postgres(tmp_path: Path, catalog_path: Path, postgres_db: str) -> None:
    assert _races(tmp_path, catalog_path, postgres_db) == 3 * TRIALS
