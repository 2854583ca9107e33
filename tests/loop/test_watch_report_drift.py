"""``nextstep report``'s context drift: a real trained model's reference (bundle meta) against
the contexts of the decisions its service made, first like the training data, then shifted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from features.catalog import load_catalog
from features.events import load_events
from loop.report import report_command
from service.app import create_app
from service.settings import Settings

pytestmark = pytest.mark.slow
T0 = 1_750_000_000.0


@pytest.fixture
def trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    from nextstep.cli.commands import train_command
    from simulation.simulate import write_simulation
    from simulation.worlds import load_world

    for name in ("NEXTSTEP_DATABASE_URL", "NEXTSTEP_CATALOG"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("NEXTSTEP_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home}/mlflow.db")
    write_simulation(load_world("ladder"), 300, 3, tmp_path / "sim")
    events, cat = tmp_path / "sim" / "events.csv", tmp_path / "sim" / "catalog.yaml"
    assert train_command(events=events, catalog=cat, promote=True, seed=0).version == "1"
    frame = load_events(events, load_catalog(cat)).frame
    url = f"sqlite:///{tmp_path / 'store' / 'service.db'}"
    yield {"home": home, "catalog": cat, "url": url, "frame": frame}


def _serve(trained: dict[str, Any], contexts: list[dict[str, Any]], prefix: str) -> None:
    settings = Settings(
        home=trained["home"], catalog=trained["catalog"], database_url=trained["url"]
    )
    with TestClient(create_app(settings)) as client:
        for i, ctx in enumerate(contexts):
            body = {"user_id": f"{prefix}{i}", "ts": T0 + i, "context": ctx}
            r = client.post("/v1/next-step", json=body)
            assert r.status_code == 200 and r.json()["model_version"] == "1", r.text


def test_report_scores_the_served_contexts_against_the_training_data(
    trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = trained["frame"]
    rng = np.random.default_rng(1)
    rows = frame.iloc[rng.choice(len(frame), 1000, replace=True)]  # the log has ~950 rows
    like = [
        {"channel": c, "device": d} for c, d in zip(rows["channel"], rows["device"], strict=True)
    ]
    _serve(trained, like, "a")
    monkeypatch.setenv("NEXTSTEP_DATABASE_URL", trained["url"])
    first = {(d.arm, d.key): d for d in report_command(catalog=trained["catalog"]).drift}
    assert first[("champion", "channel")].requests == 1000
    assert first[("champion", "channel")].psi < 0.05 and first[("champion", "device")].psi < 0.05
    moved = [{**c, "channel": "billboard"} for c in like]  # a channel training never saw
    _serve(trained, moved, "b")
    after = {(d.arm, d.key): d for d in report_command(catalog=trained["catalog"]).drift}
    assert after[("champion", "channel")].psi > 0.25  # the window now holds only new requests
    assert after[("champion", "device")].psi < 0.05
