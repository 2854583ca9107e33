"""Serving without the model it was asked to use is visible: ``/readyz`` says ``degraded``
(still HTTP 200) with the reason, and start-up logs a WARNING naming where it looked and the
absolute ``NEXTSTEP_HOME``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.service.helpers import fake_factory


def test_no_model_for_the_planner_is_degraded_with_the_reason(
    make_client: Callable[..., TestClient],
) -> None:
    r = make_client(policy="planner").get("/readyz")
    assert r.status_code == 200  # still serving every request: keep it in the load balancer
    body = r.json()
    assert body["status"] == "degraded"
    assert body["model"] is None and body["policy"] == "ladder"
    assert "arm champion: policy planner has no model, serving ladder" in body["reason"]
    assert "no model registry yet" in body["reason"]


def test_a_model_free_policy_without_a_model_is_ready(
    make_client: Callable[..., TestClient],
) -> None:
    body = make_client(policy="big_ask").get("/readyz").json()
    assert body["status"] == "ready" and body["reason"] is None


def test_a_loaded_model_is_ready(make_client: Callable[..., TestClient]) -> None:
    client = make_client(policy="greedy", decider_factory=fake_factory("3"))
    body = client.get("/readyz").json()
    assert body["status"] == "ready" and body["model"] == "3" and body["reason"] is None


def test_start_up_warns_where_it_looked_and_prints_the_home(
    make_client: Callable[..., TestClient],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="nextstep"):
        make_client(policy="planner", home=Path("relative-home"))
    home = (tmp_path / "relative-home").resolve()
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert f"NEXTSTEP_HOME={home}" in infos
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "serving without a model" in warnings[0]
    assert f"sqlite:///{home / 'mlflow.db'}" in warnings[0]
    assert str(home / "model-cache") in warnings[0]


def test_no_warning_when_the_model_serves(
    make_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="nextstep"):
        make_client(policy="greedy", decider_factory=fake_factory("3"))
    assert not [r for r in caplog.records if "serving without a model" in r.getMessage()]
