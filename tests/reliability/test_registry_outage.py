"""Registry unreachable at start-up (issue 9 item 3), end to end: a real (tiny) model trained and
promoted into an MLflow SQLite registry, one start-up that downloads it into
``NEXTSTEP_HOME/model-cache``, then a start-up with ``MLFLOW_TRACKING_URI`` pointing at a port
nothing listens on. The service is ready, serves the cached champion (same version, same scores)
and says so in ``/readyz`` notes. (The loader-level cases, with a fake bundle, are in
``tests/service/test_model_loader.py``.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("mlflow-train")]


def test_unreachable_registry_serves_the_cached_champion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nextstep.cli.commands import train_command
    from simulation.simulate import write_simulation
    from simulation.worlds import load_world

    home = tmp_path / "home"
    tracking = f"sqlite:///{home / 'mlflow.db'}"
    monkeypatch.setenv("NEXTSTEP_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    data = tmp_path / "data"
    write_simulation(load_world("ladder"), 300, 3, data)
    trained = train_command(events=data / "events.csv", catalog=data / "catalog.yaml", promote=True)
    assert trained.version == "1"
    monkeypatch.delenv("NEXTSTEP_HOME")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")

    def settings(uri: str) -> Settings:
        return Settings(
            home=home, catalog=data / "catalog.yaml", mlflow_tracking_uri=uri, policy="greedy"
        )

    body = {"user_id": "cache-u", "ts": 1_741_083_072.0, "context": {}}
    with TestClient(create_app(settings(tracking))) as up:
        ready = up.get("/readyz").json()
        assert ready["model"] == "1" and ready["arms"][0]["model_source"] == "registry", ready
        first = up.post("/v1/next-step", json=body).json()
        assert first["model_version"] == "1"
    assert (home / "model-cache" / "1").is_dir()
    assert (home / "model-cache" / "aliases.json").exists()

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with TestClient(create_app(settings("http://127.0.0.1:1"))) as down:
        r = down.get("/readyz")
        assert r.status_code == 200, r.text
        ready = r.json()
        assert ready["model"] == "1" and ready["arms"][0]["model_source"] == "cache", ready
        notes = " ".join(ready["notes"])
        assert "registry unreachable" in notes and "cached version 1" in notes, notes
        again = down.post("/v1/next-step", json=body).json()
        assert again["model_version"] == "1"
        assert [(c["step"], c["p_accept"]) for c in again["candidates"]] == [
            (c["step"], c["p_accept"]) for c in first["candidates"]
        ]
