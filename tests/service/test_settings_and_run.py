"""Settings from the environment, and ``serve_command``'s safety checks."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from service import run
from service.settings import Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert s.home == Path(".nextstep") and s.model_uri == "models:/nextstep@champion"
    assert s.db_url == f"sqlite:///{Path('.nextstep/service.db').resolve()}"
    assert s.tracking_uri == f"sqlite:///{Path('.nextstep/mlflow.db').resolve()}"
    assert s.keys == () and not s.auth_enabled
    assert s.max_body_bytes == 1 << 20 and s.idempotency_ttl_hours == 24
    assert s.policy == "planner" and s.reload_interval == 0


def test_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NEXTSTEP_HOME", str(tmp_path))
    # keys no temporary path can contain: repr(s) shows the home folder
    monkeypatch.setenv("NEXTSTEP_API_KEYS", " key-one-Zq9 ,key-two-Zq9,, ")
    monkeypatch.setenv("NEXTSTEP_DATABASE_URL", "postgresql://u@h:5/db")
    monkeypatch.setenv("NEXTSTEP_LOG_LEVEL", "debug")
    monkeypatch.setenv("NEXTSTEP_POLICY", "greedy+epsilon=0.1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    s = Settings()
    assert s.keys == (b"key-one-Zq9", b"key-two-Zq9") and s.auth_enabled
    assert s.db_url == "postgresql+psycopg://u@h:5/db"
    assert s.log_level == "DEBUG" and s.tracking_uri == "http://mlflow:5000"
    assert s.policy_config.exploration == "epsilon"
    assert "key-one" not in repr(s) and "Zq9" not in repr(s)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NEXTSTEP_POLICY", "oracle"),
        ("NEXTSTEP_LOG_LEVEL", "LOUD"),
        ("NEXTSTEP_MAX_BODY_BYTES", "0"),
        ("NEXTSTEP_RELOAD_INTERVAL", "-1"),
        ("NEXTSTEP_IDEMPOTENCY_TTL_HOURS", "0"),
    ],
)
def test_unsafe_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("10.1.2.3", False), ("example.com", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert run.is_loopback(host) is loopback


@pytest.mark.parametrize(("host", "keys", "warns"), [
    ("0.0.0.0", "k", False), ("127.0.0.1", None, False),
])  # fmt: skip
def test_serve_warns_on_open_bind_without_keys(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    catalog_path: Path,
    host: str,
    keys: str | None,
    warns: bool,
) -> None:
    calls: list[dict[str, Any]] = []
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    monkeypatch.setenv("NEXTSTEP_CATALOG", "restored-after-the-test")
    if keys:
        monkeypatch.setenv("NEXTSTEP_API_KEYS", keys)
    run.serve_command(catalog_path, host, 8123, 2)
    err = capsys.readouterr().err
    assert ("warning" in err) is warns
    [call] = calls
    # what the command was asked for reaches uvicorn unchanged
    assert (call["host"], call["port"], call["workers"]) == (host, 8123, 2)
    # each worker builds its own app from the environment: the target names a real factory
    assert call["factory"] is True
    module, _, attr = call["app"].partition(":")
    factory = getattr(importlib.import_module(module), attr)
    assert callable(factory)
    # SECURITY.md: no Server header, forwarded headers not trusted, a bounded graceful stop
    assert call["server_header"] is False and call["proxy_headers"] is False
    assert 0 < call["timeout_graceful_shutdown"] <= 60
    assert call["log_config"]["version"] == 1  # a dictConfig schema, not a file name
    import os

    assert os.environ["NEXTSTEP_CATALOG"] == str(catalog_path.resolve())


def test_serve_refuses_a_bad_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from features.errors import CatalogError

    monkeypatch.setenv("NEXTSTEP_CATALOG", "restored-after-the-test")
    bad = tmp_path / "c.yaml"
    bad.write_text("steps: [{id: a, stage: nope, effort: 1}]")
    with pytest.raises(CatalogError, match="stage"):
        run.serve_command(bad, "127.0.0.1", 8000, 1)


def test_fastapi_opentelemetry_is_opt_in(
    monkeypatch: pytest.MonkeyPatch, catalog_path: Path
) -> None:
    """Off by default (no per-request provider lookups); NEXTSTEP_OTEL=true hands FastAPI's
    native telemetry its defaults back."""
    from service.app import create_app

    off = create_app(Settings(catalog=catalog_path))
    assert not off._native_telemetry.enabled()
    assert (off._telemetry["tracing"], off._telemetry["metrics"], off._telemetry["logs"]) == (
        False,
        False,
        False,
    )
    monkeypatch.setenv("NEXTSTEP_OTEL", "true")
    on = create_app(Settings(catalog=catalog_path))
    assert (on._telemetry["tracing"], on._telemetry["metrics"], on._telemetry["logs"]) == (
        True,
        True,
        True,
    )
