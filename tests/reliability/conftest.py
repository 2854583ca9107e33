"""Fixtures for the reliability and security tests (issue 9): a catalog, started TestClients on
SQLite (and PostgreSQL where a test asks for it), and a clean ``NEXTSTEP_*`` environment."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.service import fixtures as _shared
from tests.service.helpers import StartedClients

_clean_env = _shared._clean_env  # autouse: no NEXTSTEP_* from the developer's shell
catalog_path = _shared.catalog_path

PROBLEM = "application/problem+json"


@pytest.fixture
def make_client(tmp_path: Path, catalog_path: Path) -> Iterator[Callable[..., TestClient]]:
    """``make(db=None, **settings)``: a started app (SQLite under tmp_path unless ``db``)."""
    clients = StartedClients()

    def make(db: str | None = None, **overrides: Any) -> TestClient:
        values: dict[str, Any] = {
            "home": tmp_path / "home",
            "catalog": catalog_path,
            "database_url": db or f"sqlite:///{tmp_path / 'store' / 'service.db'}",
            "exploration": "none",  # these tests assert the policy's own choice
        }
        values.update(overrides)
        return clients.start(create_app(Settings(**values)), raise_server_exceptions=False)

    yield make
    clients.stop()


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def assert_clean_problem(r: Any, *statuses: int) -> dict[str, Any]:
    """A problem+json response with one of ``statuses`` (any 4xx if none), no traceback."""
    if statuses:
        assert r.status_code in statuses, (r.status_code, r.text[:500])
    else:
        assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith(PROBLEM), r.headers["content-type"]
    assert "Traceback" not in r.text and 'File "' not in r.text
    body: dict[str, Any] = r.json()
    assert body["status"] == r.status_code and body["title"] and body["type"]
    return body
