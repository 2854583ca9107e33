"""Least privilege: admin keys apart from client keys, no credentials or raw exception text on
the open routes or in the logs, and no unauthenticated bind beyond loopback without consent."""

from __future__ import annotations

import io
import logging
import logging.config
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from features.catalog import Catalog
from models.decide import Decider
from service import run
from service.experiments import Arm
from service.redact import RedactingFilter, redact
from tests.service.helpers import FakeScorer

CLIENT, ADMIN = "client-key-1234", "admin-key-5678"
SECRET = "s3cretpw"


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


def test_a_client_key_gets_403_on_admin_routes(make_client: Callable[..., TestClient]) -> None:
    c = make_client(api_keys=CLIENT, admin_keys=ADMIN)
    r = c.post("/admin/reload", headers={"X-API-Key": CLIENT})
    assert r.status_code == 403, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert CLIENT not in r.text
    assert c.post("/admin/reload").status_code == 401
    assert c.post("/admin/reload", headers={"X-API-Key": "guess"}).status_code == 401
    assert c.post("/admin/reload", headers={"X-API-Key": ADMIN}).status_code == 200
    # an admin key is not a client key: it opens /admin only
    assert c.get("/v1/steps", headers={"X-API-Key": ADMIN}).status_code == 401
    assert c.get("/v1/steps", headers={"X-API-Key": CLIENT}).status_code == 200


def test_client_keys_without_admin_keys_close_the_admin_routes(
    make_client: Callable[..., TestClient],
) -> None:
    c = make_client(api_keys=CLIENT)
    assert c.post("/admin/reload", headers={"X-API-Key": CLIENT}).status_code == 403
    spec = c.get("/openapi.json").json()
    assert "403" in spec["paths"]["/admin/reload"]["post"]["responses"]


def test_admin_keys_are_secret_in_settings(make_settings: Callable[..., Any]) -> None:
    s = make_settings(api_keys=CLIENT, admin_keys=f"{ADMIN}, other-admin")
    assert ADMIN not in repr(s) and ADMIN not in str(s.model_dump())
    assert s.admin_key_bytes == (ADMIN.encode(), b"other-admin")


class _Registry:
    """A factory whose later loads fail with a message quoting a credentialed URL."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def __call__(self, catalog: Catalog, arm: Arm) -> Decider:
        self.calls += 1
        if self.calls > 1:
            raise self.error
        return Decider(catalog, arm.policy, scorer=FakeScorer(catalog), model_version="1")


def test_readyz_never_publishes_credentials_of_a_failed_reload(
    make_client: Callable[..., TestClient],
) -> None:
    from models.bundle import ModelLoadError

    url = f"http://admin:{SECRET}@registry.internal:5000/api"
    c = make_client(
        decider_factory=_Registry(ModelLoadError(f"cannot download model 2 from {url}")),
        admin_keys=ADMIN,
    )
    r = c.post("/admin/reload", headers={"X-API-Key": ADMIN})
    assert r.status_code == 409
    ready = c.get("/readyz")
    assert ready.status_code == 200
    assert "last reload failed" in ready.text and "registry.internal" in ready.text
    assert SECRET not in ready.text and "admin:" not in ready.text


def test_readyz_shows_only_the_type_of_an_unexpected_error(
    make_client: Callable[..., TestClient],
) -> None:
    """Model polling hits an error it does not expect: /readyz names its type, no text."""
    import time

    registry = _Registry(RuntimeError(f"boom postgresql://u:{SECRET}@db/x"))
    c = make_client(decider_factory=registry, reload_interval=0.02)
    deadline = time.monotonic() + 10
    while c.app.state.runtime.last_error is None and time.monotonic() < deadline:
        time.sleep(0.02)
    text = c.get("/readyz").text
    assert "last reload failed: RuntimeError" in text, text
    assert SECRET not in text and "db/x" not in text and "boom" not in text


def test_readyz_with_an_unreachable_credentialed_registry(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real model loader against a tracking URI with a password, nothing listening."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    c = make_client(mlflow_tracking_uri=f"http://admin:{SECRET}@127.0.0.1:1")
    r = c.get("/readyz")
    assert r.status_code == 200
    assert "registry unreachable" in r.text, r.text
    assert SECRET not in r.text and "127.0.0.1:1" not in r.text


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("http://admin:pw@h:5000/x", "http://***@h:5000/x"),
        ("postgresql+psycopg://u:p%40ss@db:5432/n", "postgresql+psycopg://***@db:5432/n"),
        ("see https://token@host/a and ftp://x:y@z", "see https://***@host/a and ftp://***@z"),
        ("dsn host=db password=hunter2 user=u", "dsn host=db password=*** user=u"),
        ("https://h/x?api_key=abc&y=1", "https://h/x?api_key=***&y=1"),
        ("http://host:5000/no-credentials", "http://host:5000/no-credentials"),
        ("mail me at a@b.c", "mail me at a@b.c"),
    ],
)
def test_redact(raw: str, clean: str) -> None:
    assert redact(raw) == clean


def test_service_log_handlers_redact(tmp_path: Path) -> None:
    """``log_config`` (what uvicorn applies in every worker) filters every handler."""
    config = run.log_config("INFO")
    stream = io.StringIO()
    config["handlers"]["nextstep"]["stream"] = stream
    logging.config.dictConfig(config)
    try:
        log = logging.getLogger("nextstep.service.test")
        log.warning("registry %s down", f"http://admin:{SECRET}@h:5000")
        try:
            raise ValueError(f"postgresql://u:{SECRET}@db/n")
        except ValueError:
            log.exception("store failed")
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
        logging.getLogger("nextstep").handlers.clear()
        logging.getLogger("nextstep").propagate = True
    out = stream.getvalue()
    assert "registry http://***@h:5000 down" in out
    assert "store failed" in out and "ValueError" in out
    assert SECRET not in out
    assert all("redact" in h.get("filters", []) for h in config["handlers"].values())
    assert isinstance(RedactingFilter(), logging.Filter)


@pytest.mark.parametrize(("host", "keys", "insecure", "outcome"), [
    ("0.0.0.0", None, False, "refused"),
    ("10.1.2.3", None, False, "refused"),
    ("0.0.0.0", None, True, "warned"),
    ("0.0.0.0", "k", False, "served"),
    ("127.0.0.1", None, False, "served"),
])  # fmt: skip
def test_open_bind_without_keys_needs_insecure(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    catalog_path: Path,
    host: str,
    keys: str | None,
    insecure: bool,
    outcome: str,
) -> None:
    import uvicorn

    calls: list[str] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(app))
    monkeypatch.setenv("NEXTSTEP_CATALOG", "restored-after-the-test")
    if keys:
        monkeypatch.setenv("NEXTSTEP_API_KEYS", keys)
    if outcome == "refused":
        with pytest.raises(run.InsecureBind, match="--insecure"):
            run.serve_command(catalog_path, host, 8123, 1, insecure=insecure)
        assert calls == []
        return
    run.serve_command(catalog_path, host, 8123, 1, insecure=insecure)
    assert calls == ["service.app:app_from_env"]
    assert ("warning" in capsys.readouterr().err) is (outcome == "warned")


def test_cli_serve_refuses_an_open_bind_with_exit_2(
    monkeypatch: pytest.MonkeyPatch, catalog_path: Path
) -> None:
    from typer.testing import CliRunner

    from nextstep.cli.app import app

    monkeypatch.setenv("NEXTSTEP_CATALOG", "restored-after-the-test")
    r = CliRunner().invoke(app, ["serve", "--catalog", str(catalog_path), "--host", "0.0.0.0"])
    assert r.exit_code == 2
    assert "--insecure" in r.output and "Traceback" not in r.output
