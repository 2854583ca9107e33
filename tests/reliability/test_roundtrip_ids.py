"""Hostile ids round-trip unchanged (issue 9 item 4): quotes, unicode (emoji, RTL, combining
marks, zero-width), SQL metacharacters, backslashes, percent signs and slashes go through
next-step -> outcome -> ``GET /v1/users/{id}`` (URL-encoded path) byte for byte, on SQLite and
PostgreSQL. Everything reaches SQL as bound parameters, so ``'; DROP TABLE`` is just a name.

Over real HTTP (``nextstep serve`` in a subprocess): Starlette's TestClient unquotes a path twice,
which would turn ``%2525`` into ``%`` and test the client rather than the service."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.service.helpers import ServerProcess

pytestmark = pytest.mark.e2e

TS = 1_741_083_072.0
IDS = [
    "o'brien",
    'say "hi"',
    "'; DROP TABLE decisions; --",
    '" OR 1=1 --',
    "Robert'); DELETE FROM outcomes WHERE ('1'='1",
    "back\\slash\\\\double",
    "100% sure %s %d %% %25 %00",
    "under_score LIKE '%'",
    "emoji 🚀👩‍👩‍👧‍👦🏳️‍🌈",
    "עברית RTL \u202etxt.exe",
    "e\u0301 n\u0303 combining Z\u0336\u0337",
    "zero\u200bwidth\ufeffbom",
    "日本語のユーザー",
    "tab\there",
    "  leading and trailing  ",
    "a/b/../c",
    "?query=1&x#frag",
    "${jndi:ldap://x}",
    "<script>alert(1)</script>",
]


def _round_trip(client: httpx.Client, uid: str, n: int) -> None:
    d = client.post(
        "/v1/next-step", json={"user_id": uid, "ts": TS + n, "context": {"note": uid, uid: "k"}}
    )
    assert d.status_code == 200, (uid, d.text)
    assert d.json()["user_id"] == uid
    did = d.json()["decision_id"]
    o = client.post("/v1/outcomes", json={"decision_id": did, "outcome": "declined", "ts": TS + n})
    assert o.status_code == 201, (uid, o.text)
    org = client.post(
        "/v1/outcomes",
        json={"user_id": uid, "step": "watch_clip", "outcome": "accepted", "ts": TS + n + 1},
    )
    assert org.status_code == 201, (uid, org.text)
    view = client.get(f"/v1/users/{quote(uid, safe='')}")
    assert view.status_code == 200, (uid, view.text)
    body = view.json()
    assert body["user_id"] == uid
    assert [(h["decision_id"], h["outcome"]) for h in body["history"]] == [
        (did, "declined"),
        (None, "accepted"),
    ]
    assert body["accepted"] == ["watch_clip"]


def _check_all(client: httpx.Client) -> None:
    for n, uid in enumerate(IDS):
        _round_trip(client, uid, n)
    # nobody's history leaked into another's and the tables are all still there
    assert client.get("/v1/users/o'brien").json()["user_id"] == "o'brien"
    assert client.get("/readyz").status_code == 200
    assert client.post("/v1/next-step", json={"user_id": "after"}).status_code == 200


@contextlib.contextmanager
def _serve(tmp_path: Path, catalog_path: Path, **env: str) -> Iterator[httpx.Client]:
    """A real server and a client for it; the server stops when the ``with`` block ends, also
    when it raised (a generator driven by ``for`` would keep it running until collected)."""
    server = ServerProcess(tmp_path, catalog_path, NEXTSTEP_HOME=str(tmp_path / "home"), **env)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.base, timeout=30) as http:
            yield http
    finally:
        server.stop()


def test_hostile_ids_round_trip_sqlite(tmp_path: Path, catalog_path: Path) -> None:
    with _serve(tmp_path, catalog_path) as http:
        _check_all(http)


@pytest.mark.postgres
@pytest.mark.xdist_group("postgres")
def test_hostile_ids_round_trip_postgres(
    tmp_path: Path, catalog_path: Path, postgres_db: str
) -> None:
    with _serve(tmp_path, catalog_path, NEXTSTEP_DATABASE_URL=postgres_db) as http:
        _check_all(http)
