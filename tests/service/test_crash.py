"""Crash safety (issue 9): ``kill -9`` the real server mid-load and restart it on the same store.

16 threads drive next-step and outcome calls, each with its own ``Idempotency-Key``; once at
least 1,000 writes have been acknowledged (2xx received in full) the server is killed with
SIGKILL and started again on the same ``NEXTSTEP_HOME`` (or PostgreSQL database). Then:

* every acknowledged decision and outcome is in the store (zero lost);
* every acknowledged decision still accepts its outcome (retried with the same key when the
  first attempt was in flight: 201 either way);
* replaying an acknowledged request with its key returns the first response byte for byte.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.store import Store
from tests.service.helpers import CATALOG, ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
THREADS = 16
TARGET = 1000


class Ledger:
    """What the clients saw acknowledged (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # key -> (request body, response bytes, decision id)
        self.decisions: dict[str, tuple[dict[str, Any], bytes, str]] = {}
        # key -> (request body, response bytes)
        self.outcomes: dict[str, tuple[dict[str, Any], bytes]] = {}
        # decision id -> (key, body) of the outcome request sent for it, acknowledged or not
        self.attempted_outcome: dict[str, tuple[str, dict[str, Any]]] = {}

    @property
    def writes(self) -> int:
        return len(self.decisions) + len(self.outcomes)


def _drive(base: str, worker: int, ledger: Ledger, stop: threading.Event) -> None:
    with httpx.Client(base_url=base, timeout=30) as http:
        i = 0
        while not stop.is_set():
            i += 1
            key = f"w{worker}-d{i}"
            body = {"user_id": f"user-{worker}-{i % 37}", "context": {"w": worker, "i": i}}
            try:
                r = http.post("/v1/next-step", json=body, headers={"Idempotency-Key": key})
            except httpx.HTTPError:
                return  # the server is gone
            if r.status_code != 200:
                continue  # e.g. 503 while the store is busy: not acknowledged, not counted
            decision = r.json()
            with ledger.lock:
                ledger.decisions[key] = (body, r.content, decision["decision_id"])
            if decision["step"] is None or i % 2:
                continue
            okey = f"w{worker}-o{i}"
            obody = {"decision_id": decision["decision_id"], "outcome": "declined"}
            with ledger.lock:
                ledger.attempted_outcome[decision["decision_id"]] = (okey, obody)
            try:
                r = http.post("/v1/outcomes", json=obody, headers={"Idempotency-Key": okey})
            except httpx.HTTPError:
                return
            if r.status_code == 201:
                with ledger.lock:
                    ledger.outcomes[okey] = (obody, r.content)


def _crash_and_verify(tmp_path: Path, db_url: str | None) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(CATALOG), encoding="utf-8")
    env = {"NEXTSTEP_HOME": str(tmp_path / "home"), "NEXTSTEP_LOG_LEVEL": "WARNING"}
    if db_url:
        env["NEXTSTEP_DATABASE_URL"] = db_url
    ledger, stop = Ledger(), threading.Event()
    with ServerProcess(tmp_path, catalog, **env) as server:  # stopped even if a wait fails
        server.wait_ready()
        threads = [
            threading.Thread(target=_drive, args=(server.base, w, ledger, stop), daemon=True)
            for w in range(THREADS)
        ]
        for t in threads:
            t.start()
        try:
            deadline = time.time() + 300
            while ledger.writes < TARGET:
                assert time.time() < deadline, f"only {ledger.writes} writes acknowledged"
                time.sleep(0.05)
            server.kill9()  # mid-load: requests are in flight right now
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
    acknowledged = ledger.writes
    assert acknowledged >= TARGET

    server = ServerProcess(tmp_path, catalog, **env)
    try:
        server.wait_ready()
        store = Store(db_url or f"sqlite:///{tmp_path / 'home' / 'service.db'}")
        lost = []
        with store.read() as conn:
            for key, (_, _, did) in ledger.decisions.items():
                if store.get_decision(conn, did) is None:
                    lost.append(key)
            for key, (obody, _) in ledger.outcomes.items():
                if store.outcome_of(conn, obody["decision_id"]) is None:
                    lost.append(key)
        store.dispose()
        assert lost == [], f"{len(lost)} of {acknowledged} acknowledged writes lost"

        def recheck(item: tuple[str, tuple[dict[str, Any], bytes, str]]) -> None:
            key, (body, first, did) = item
            with httpx.Client(base_url=server.base, timeout=60) as http:
                again = http.post("/v1/next-step", json=body, headers={"Idempotency-Key": key})
                assert again.status_code == 200 and again.content == first, key
                if json_step(first) is None:
                    return
                okey, obody = ledger.attempted_outcome.get(
                    did, (f"after-{key}", {"decision_id": did, "outcome": "accepted"})
                )
                r = http.post("/v1/outcomes", json=obody, headers={"Idempotency-Key": okey})
                assert r.status_code == 201, (key, r.text)
                if okey in ledger.outcomes:
                    assert r.content == ledger.outcomes[okey][1]

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(recheck, ledger.decisions.items()))
    finally:
        server.stop()
    print(f"acknowledged writes: {acknowledged}, lost: 0")


def json_step(body: bytes) -> str | None:
    import json

    return json.loads(body)["step"]


def test_kill_9_loses_no_acknowledged_write_sqlite(tmp_path: Path) -> None:
    _crash_and_verify(tmp_path, None)


@pytest.mark.postgres
@pytest.mark.xdist_group("postgres")
def test_kill_9_loses_no_acknowledged_write_postgres(tmp_path: Path, postgres_db: str) -> None:
    _crash_and_verify(tmp_path, postgres_db)
