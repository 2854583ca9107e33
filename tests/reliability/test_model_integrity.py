"""Models that cannot run code, end to end: a real model trained and registered (which records
the serving artifact's sha256 on the model version), served once (verified), then tampered
with in the model cache: a pickle payload planted and the model text changed. The restarted
service refuses the model loudly (a log line, a /readyz note), serves the ladder instead, and
the payload never runs. (Unit cases: ``tests/models/test_serving.py``.)"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("mlflow-train")]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what a hostile pickle runs when it is loaded
        return (Path.touch, (self.marker,))


def test_a_tampered_cached_model_is_refused_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from mlflow import MlflowClient

    from models.serving import DIGEST_TAG, SERVING_DIR, serving_digest
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
    recorded = MlflowClient(tracking, tracking).get_model_version("nextstep", "1").tags
    monkeypatch.delenv("NEXTSTEP_HOME")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert trained.version == "1" and len(recorded[DIGEST_TAG]) == 64

    settings = Settings(
        home=home, catalog=data / "catalog.yaml", mlflow_tracking_uri=tracking, policy="greedy"
    )
    with TestClient(create_app(settings)) as up:
        assert up.get("/readyz").json()["model"] == "1"
    serving = next((home / "model-cache" / "1").rglob(f"{SERVING_DIR}/serving.json")).parent
    assert serving_digest(serving) == recorded[DIGEST_TAG]  # what was served was verified

    marker = tmp_path / "payload-ran"
    (serving / "objects.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    index = serving / "serving.json"  # still valid JSON: only the digest can tell
    index.write_text(index.read_text().replace('"format"', ' "format"', 1))
    with (
        caplog.at_level(logging.ERROR, logger="nextstep"),
        TestClient(create_app(settings)) as down,
    ):
        ready = down.get("/readyz").json()
        decision = down.post("/v1/next-step", json={"user_id": "t-1"}).json()
    assert ready["model"] is None and ready["policy"] == "ladder", ready
    assert "changed after registration" in " ".join(ready["notes"]), ready
    assert decision["model_version"] is None
    assert "MODEL REFUSED" in caplog.text
    assert not marker.exists()
