"""Exporting a store the service is writing to: every outcome read finds its decision (the
learner exports a live store; an outcome without its decision has no propensity, and one such
row makes the gate's off-policy check give up)."""

from __future__ import annotations

import threading
from pathlib import Path

import yaml
from fastapi.testclient import TestClient

from loop.export import read_store
from service.app import create_app
from service.settings import Settings
from tests.service.helpers import CATALOG, fake_factory


def test_outcomes_read_while_the_service_writes_all_have_their_decision(tmp_path: Path) -> None:
    cat = tmp_path / "catalog.yaml"
    cat.write_text(yaml.safe_dump(CATALOG), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'service.db'}"
    settings = Settings(home=tmp_path / "home", catalog=cat, database_url=url, policy="greedy")
    stop = threading.Event()
    with TestClient(create_app(settings, decider_factory=fake_factory())) as client:

        def write() -> None:
            n = 0
            while not stop.is_set():
                d = client.post("/v1/next-step", json={"user_id": f"u{n}"}).json()
                client.post(
                    "/v1/outcomes", json={"decision_id": d["decision_id"], "outcome": "accepted"}
                )
                n += 1

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        try:
            seen = 0
            for _ in range(40):
                dec, out = read_store(url)
                assert set(out["decision_id"].dropna()) <= set(dec["decision_id"])
                seen = len(out)
        finally:
            stop.set()
            writer.join(10)
    assert seen > 10  # the reads really raced the writes
