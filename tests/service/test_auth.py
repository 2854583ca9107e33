"""API keys: every /v1 and /admin route needs one when configured; ops routes stay open.
(Admin keys apart from client keys: ``test_least_privilege.py``.)"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from service.settings import Settings

KEYS = "alpha-key-123, beta-key-456"


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """Auth does not touch the store's dialect: SQLite only keeps this matrix fast."""
    return sqlite_url


@pytest.fixture
def guarded(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(api_keys=KEYS)


CALLS = [
    ("POST", "/v1/next-step", {"user_id": "a1"}),
    ("POST", "/v1/next-step:batch", {"requests": [{"user_id": "a1"}]}),
    ("POST", "/v1/outcomes", {"user_id": "a1", "step": "read_intro", "outcome": "declined"}),
    ("GET", "/v1/users/a1", None),
    ("GET", "/v1/steps", None),
    ("GET", "/v1/experiments", None),
    ("POST", "/admin/reload", None),
]


@pytest.mark.parametrize(("method", "path", "body"), CALLS, ids=[c[1] for c in CALLS])
@pytest.mark.parametrize("key", [None, "wrong", "alpha-key-12", "", "alpha-key-123 "])
def test_missing_or_wrong_key_is_401(
    guarded: TestClient, method: str, path: str, body: object, key: str | None
) -> None:
    headers = {} if key is None else {"X-API-Key": key}
    r = guarded.request(method, path, json=body, headers=headers)
    assert r.status_code == 401, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    if key:
        assert key.strip() not in r.text


@pytest.mark.parametrize(("method", "path", "body"), CALLS, ids=[c[1] for c in CALLS])
@pytest.mark.parametrize("key", ["alpha-key-123", "beta-key-456"])
def test_any_configured_key_works(
    guarded: TestClient, method: str, path: str, body: object, key: str
) -> None:
    r = guarded.request(method, path, json=body, headers={"X-API-Key": key})
    if path.startswith("/admin"):  # client keys never open /admin (NEXTSTEP_ADMIN_KEYS do)
        assert r.status_code == 403, r.text
        return
    assert r.status_code in (200, 201), r.text


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"])
def test_ops_routes_stay_open(guarded: TestClient, path: str) -> None:
    assert guarded.get(path).status_code == 200


def test_openapi_declares_the_key_only_when_configured(
    guarded: TestClient, client: TestClient
) -> None:
    spec = guarded.get("/openapi.json").json()
    assert "X-API-Key" in str(spec["components"]["securitySchemes"])
    assert "401" in spec["paths"]["/v1/next-step"]["post"]["responses"]
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


def test_keys_never_appear_in_logs_or_repr(
    guarded: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    guarded.post("/v1/next-step", json={"user_id": "a2"}, headers={"X-API-Key": "alpha-key-123"})
    guarded.post("/v1/next-step", json={"user_id": "a2"}, headers={"X-API-Key": "nope-nope"})
    settings: Settings = guarded.app.state.settings
    assert "alpha-key-123" not in repr(settings) and "alpha-key-123" not in str(settings)
    assert "alpha-key-123" not in caplog.text and "nope-nope" not in caplog.text
    assert settings.keys == (b"alpha-key-123", b"beta-key-456")
