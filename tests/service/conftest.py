"""Fixtures for the service tests: a catalog, a store URL (SQLite file or PostgreSQL database)
and a factory of started TestClients. API tests that take ``make_client``/``client`` run once
per back end; the PostgreSQL runs are marked ``postgres`` and grouped on one xdist worker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.fast_lane import NextStepLane
from service.settings import Settings
from tests.service import fixtures as _shared
from tests.service.helpers import StartedClients

_clean_env = _shared._clean_env  # autouse: no NEXTSTEP_* from the developer's shell
catalog_path = _shared.catalog_path

PG_PARAM = pytest.param(
    "postgres", marks=[pytest.mark.postgres, pytest.mark.xdist_group("postgres")]
)


@pytest.fixture(scope="session")
def pg_service_url(postgres_server: Any) -> Iterator[str]:
    """One migrated database per session; tests empty it instead of creating their own
    (CREATE DATABASE costs most of a second, TRUNCATE a few milliseconds)."""
    from service.store import Store

    name = postgres_server.create_database()
    url = postgres_server.url_for(name)
    store = Store(url)
    store.migrate()
    store.dispose()
    yield url
    postgres_server.drop_database(name)


def _empty_postgres(url: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    dsn = f"host={u.host} port={u.port} user={u.username} dbname={u.database}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE outcomes, decisions, idempotency, user_state, store_meta, learner_lease"
            " RESTART IDENTITY CASCADE"
        )


@pytest.fixture(params=["sqlite", PG_PARAM])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'service.db'}"
    url: str = request.getfixturevalue("pg_service_url")
    _empty_postgres(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'service.db'}"


@pytest.fixture
def make_settings(tmp_path: Path, catalog_path: Path) -> Callable[..., Settings]:
    def make(db: str | None = None, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "home": tmp_path / "home",
            "catalog": catalog_path,
            "database_url": db or f"sqlite:///{tmp_path / 'store' / 'service.db'}",
            # off: these tests assert the policy's own choice; exploration is tested with it on
            "exploration": "none",
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def make_client(
    make_settings: Callable[..., Settings], db_url: str
) -> Iterator[Callable[..., TestClient]]:
    """Start an app on this test's store; several calls share the store (a "restart")."""
    clients = StartedClients()

    def make(*, decider_factory: Any = None, **overrides: Any) -> TestClient:
        settings = make_settings(db_url, **overrides)
        return clients.start(create_app(settings, decider_factory=decider_factory))

    yield make
    clients.stop()


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give each schemathesis operation test its own node id.

    schemathesis 4 names its items ``test[POST /v1/...]`` but pytest 9 derives the node id from
    the original function name only, so every operation shares one id and pytest-xdist would run
    just one of them. The operation label becomes the id's parameter part instead.
    """
    for item in items:
        label = getattr(item, "operation_label", None)
        original = getattr(item, "originalname", None)
        if label and original and item.nodeid.endswith(f"::{original}"):
            item._id = item.parent.id.child(original).with_params(label)  # type: ignore[attr-defined,union-attr]


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many requests the fast lane answered itself (the rest went to the route)."""
    calls: list[int] = []
    real = NextStepLane._serve

    async def spy(self: NextStepLane, *args: Any) -> None:
        calls.append(1)
        await real(self, *args)

    monkeypatch.setattr(NextStepLane, "_serve", spy)
    return calls
