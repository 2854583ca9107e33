"""Model lifecycle in the app: reload swaps atomically, refusals keep the old model serving,
requests keep flowing during swaps, and polling picks up a new version by itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from features.catalog import Catalog
from models.decide import Decider
from service.experiments import Arm
from tests.service.helpers import FakeScorer


class Registry:
    """A stand-in model registry: ``version`` is the champion; ``broken`` refuses to load."""

    def __init__(self) -> None:
        self.version = 1
        self.broken = False
        self.loads = 0

    def factory(self, catalog: Catalog, arm: Arm) -> Decider:
        self.loads += 1
        if self.broken:
            from service.model_loader import ModelRefused

            raise ModelRefused(f"model version {self.version} is corrupt")
        return Decider(
            catalog, arm.policy, scorer=FakeScorer(catalog), model_version=str(self.version)
        )

    __call__ = factory  # a factory with ``probe``: polling only rebuilds on a new version

    def probe(self, arm: Arm) -> str:
        return str(self.version)


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


def test_reload_switches_version_and_refusal_keeps_the_old(
    make_client: Callable[..., TestClient],
) -> None:
    reg = Registry()
    client = make_client(policy="greedy", decider_factory=reg.factory)
    assert client.post("/v1/next-step", json={"user_id": "m"}).json()["model_version"] == "1"
    reg.version = 2
    r = client.post("/admin/reload")
    assert r.status_code == 200 and r.json()["arms"][0]["model_version"] == "2"
    assert client.post("/v1/next-step", json={"user_id": "m"}).json()["model_version"] == "2"
    reg.version, reg.broken = 3, True
    r = client.post("/admin/reload")
    assert r.status_code == 409
    assert "corrupt" in r.json()["detail"]
    assert client.post("/v1/next-step", json={"user_id": "m"}).json()["model_version"] == "2"
    ready = client.get("/readyz").json()
    assert ready["model"] == "2" and any("corrupt" in n for n in ready["notes"])
    assert 'model_version="2"' in client.get("/metrics").text


def test_a_model_failing_its_smoke_decision_is_refused(
    make_client: Callable[..., TestClient],
) -> None:
    class Exploding(FakeScorer):
        def p_accept(self, *a: object, **k: object):  # type: ignore[no-untyped-def]
            raise ValueError("feature mismatch")

    state = {"bad": False}

    def factory(catalog: Catalog, arm: Arm) -> Decider:
        scorer = Exploding(catalog) if state["bad"] else FakeScorer(catalog)
        return Decider(catalog, arm.policy, scorer=scorer, model_version="9")

    client = make_client(policy="greedy", decider_factory=factory)
    state["bad"] = True
    r = client.post("/admin/reload")
    assert r.status_code == 409 and "feature mismatch" in r.json()["detail"]
    assert client.post("/v1/next-step", json={"user_id": "z"}).status_code == 200


def test_requests_flow_through_reloads_without_failures(
    make_client: Callable[..., TestClient],
) -> None:
    reg = Registry()
    client = make_client(policy="greedy", decider_factory=reg.factory)
    stop = threading.Event()
    seen: list[tuple[int, str | None]] = []

    def traffic(worker: int) -> None:
        i = 0
        while not stop.is_set():
            r = client.post("/v1/next-step", json={"user_id": f"w{worker}-{i}"})
            seen.append((r.status_code, r.json().get("model_version")))
            i += 1

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(traffic, w) for w in range(4)]
        for v in range(2, 6):
            time.sleep(0.15)
            reg.version = v
            assert client.post("/admin/reload").status_code == 200
        time.sleep(0.15)
        stop.set()
        for f in futures:
            f.result()
    assert seen and all(status == 200 for status, _ in seen)
    versions = [v for _, v in seen]
    assert versions[-1] == "5" and "1" in versions


def test_polling_picks_up_a_new_champion(make_client: Callable[..., TestClient]) -> None:
    reg = Registry()
    client = make_client(policy="greedy", decider_factory=reg, reload_interval=0.05)
    reg.version = 4
    deadline = time.time() + 5
    while time.time() < deadline:
        if client.post("/v1/next-step", json={"user_id": "p"}).json()["model_version"] == "4":
            break
        time.sleep(0.05)
    else:
        pytest.fail("polling did not pick up version 4")
    loads = reg.loads
    time.sleep(0.3)
    assert reg.loads == loads  # unchanged version: no rebuilds
