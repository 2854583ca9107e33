"""Model lifecycle in the app: reload swaps atomically, refusals keep the old model serving,
requests keep flowing during swaps, and polling picks up a new version by itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
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
        self.probes = 0

    def factory(self, catalog: Catalog, arm: Arm) -> Decider:
        self.loads += 1
        if self.broken:
            from models.bundle import ModelLoadError

            raise ModelLoadError(f"model version {self.version} is corrupt")
        return Decider(
            catalog, arm.policy, scorer=FakeScorer(catalog), model_version=str(self.version)
        )

    __call__ = factory  # a factory with ``probe``: polling only rebuilds on a new version

    def probe(self, arm: Arm) -> str:
        self.probes += 1
        return str(self.version)


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds (a busy machine gets
    time, a broken service does not hang the test)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or condition}")
        time.sleep(0.01)


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
        try:
            for v in range(2, 6):
                n = len(seen)  # reload only with requests flowing: a dozen more answered
                wait_until(lambda n=n: len(seen) >= n + 12, what="traffic before a reload")
                reg.version = v
                assert client.post("/admin/reload").status_code == 200
            n = len(seen)
            wait_until(lambda: len(seen) >= n + 12, what="traffic after the last reload")
        finally:
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
    wait_until(
        lambda: client.post("/v1/next-step", json={"user_id": "p"}).json()["model_version"] == "4",
        what="polling to pick up version 4",
    )
    loads, probes = reg.loads, reg.probes
    wait_until(lambda: reg.probes >= probes + 3, what="three more polls")
    assert reg.loads == loads  # polled again, version unchanged: no rebuilds


def test_a_broken_experiments_file_is_refused_and_the_old_arms_serve_on(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    reg = Registry()
    path = tmp_path / "experiments.yaml"
    arms = [{"name": "a", "policy": "greedy"}, {"name": "b", "policy": "ladder"}]
    path.write_text(yaml.safe_dump({"name": "x", "arms": arms}), encoding="utf-8")
    client = make_client(experiments=path, decider_factory=reg.factory)
    before = client.get("/v1/experiments").json()
    for broken in (
        "arms: [{name: a, weight: -1}]",
        "arms: [",
        "",
        "arms: [{name: a, policy: oracle}]",
    ):
        path.write_text(broken, encoding="utf-8")
        r = client.post("/admin/reload")
        assert r.status_code == 409, (broken, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "still serving the previous" in r.json()["detail"]
        assert client.get("/v1/experiments").json() == before
        d = client.post("/v1/next-step", json={"user_id": "e1"}).json()
        assert d["arm"] in {"a", "b"}
    path.write_text(yaml.safe_dump({"name": "x", "arms": arms[:1]}), encoding="utf-8")
    assert client.post("/admin/reload").status_code == 200  # a fixed file is taken again
    assert [a["name"] for a in client.get("/v1/experiments").json()["arms"]] == ["a"]


def test_concurrent_reloads_end_on_the_latest_version(
    make_client: Callable[..., TestClient],
) -> None:
    """Eight reloads at once, with requests between them: each is answered 200, the swaps do
    not interleave into a mixed state, and the service ends on the newest version."""
    reg = Registry()
    client = make_client(policy="greedy", decider_factory=reg.factory)
    reg.version = 7
    with ThreadPoolExecutor(8) as pool:
        reloads = [pool.submit(client.post, "/admin/reload") for _ in range(8)]
        asks = [
            pool.submit(client.post, "/v1/next-step", json={"user_id": f"r{i}"}) for i in range(8)
        ]
        statuses = [f.result().status_code for f in reloads]
        answers = [f.result() for f in asks]
    assert statuses == [200] * 8
    assert all(a.status_code == 200 and a.json()["model_version"] in ("1", "7") for a in answers)
    assert client.post("/v1/next-step", json={"user_id": "after"}).json()["model_version"] == "7"
    assert [a["model_version"] for a in client.post("/admin/reload").json()["arms"]] == ["7"]
