"""Exporting a store the service is writing to: every outcome read finds its decision (the
learner exports a live store; an outcome without its decision has no propensity, and one such
row makes the gate's off-policy check give up)."""

from __future__ import annotations

import threading
import time
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
            # Read until the reads have really raced the writes: at least 40 reads and at least
            # 10 outcome counts seen along the way. A slow writer on a loaded machine only makes
            # this take longer, not fail; the deadline bounds a writer that has died.
            counts: set[int] = set()
            reads = 0
            deadline = time.monotonic() + 120
            while (reads < 40 or len(counts) <= 10) and time.monotonic() < deadline:
                dec, out = read_store(url)
                assert set(out["decision_id"].dropna()) <= set(dec["decision_id"])
                counts.add(len(out))
                reads += 1
        finally:
            stop.set()
            writer.join(10)
    assert len(counts) > 10  # the reads saw the store at more than 10 different sizes
