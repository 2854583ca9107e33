"""Helpers shared by the service tests (import as ``tests.service.helpers``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from features.catalog import Catalog
from models.decide import Decider
from service.experiments import Arm

CATALOG: dict[str, Any] = {
    "steps": [
        {"id": "read_intro", "stage": "start", "effort": 1, "title": "Read the intro"},
        {"id": "watch_clip", "stage": "deliver", "effort": 2, "value": 1},
        {"id": "take_quiz", "stage": "guide", "effort": 3, "requires": ["watch_clip"]},
        {"id": "create_account", "stage": "build", "effort": 5, "requires": ["read_intro"]},
        {"id": "purchase", "stage": "convert", "effort": 8, "requires": ["create_account"]},
    ]
}
GOAL = "purchase"


class StartedClients:
    """TestClients started for one test (their apps' lifespans entered), stopped in reverse
    order at its end."""

    def __init__(self) -> None:
        self._clients: list[TestClient] = []

    def __len__(self) -> int:
        return len(self._clients)

    def start(self, app: Any, **options: Any) -> TestClient:
        client = TestClient(app, **options)
        client.__enter__()
        self._clients.append(client)
        return client

    def stop(self) -> None:
        for c in reversed(self._clients):
            c.__exit__(None, None, None)
        self._clients.clear()


class FakeScorer:
    """A model stand-in: fixed readiness per step id (default 0.5), no LightGBM needed."""

    def __init__(self, catalog: Catalog, probs: Mapping[str, float] | None = None) -> None:
        self.catalog = catalog
        self.probs = dict(probs or {})

    def p_accept(
        self, state: Any, candidates: Sequence[int], now: float, context: Mapping[str, Any]
    ) -> np.ndarray:
        return np.asarray([self.probs.get(self.catalog.ids[i], 0.5) for i in candidates])


def fake_factory(
    version: str = "7", probs: Mapping[str, float] | None = None
) -> Callable[[Catalog, Arm], Decider]:
    """A decider factory serving a fake model with the given version."""

    def factory(catalog: Catalog, arm: Arm) -> Decider:
        return Decider(
            catalog, arm.policy, scorer=FakeScorer(catalog, probs), model_version=version
        )

    return factory


def decide(client: TestClient, user_id: str, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/next-step", json={"user_id": user_id, **body})
    assert r.status_code == 200, r.text
    return r.json()


def outcome(client: TestClient, decision_id: str, result: str, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/outcomes", json={"decision_id": decision_id, "outcome": result, **body})
    assert r.status_code == 201, r.text
    return r.json()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``nextstep serve`` in a subprocess on a free port, with a clean NEXTSTEP_* environment."""

    def __init__(self, workdir: Any, catalog: Any, **env: str) -> None:
        import os
        import subprocess
        import sys
        from pathlib import Path

        self.workdir = Path(workdir)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # no NEXTSTEP_* and no MLFLOW_* of this process: an MLflow call of an earlier test in the
        # same worker can leave MLFLOW_REGISTRY_URI behind, pointing at another test's registry
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("NEXTSTEP_", "MLFLOW_"))}
        clean.update(env)
        exe = Path(sys.executable).with_name("nextstep")
        self.log_path = self.workdir / f"server-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [str(exe), "serve", "--catalog", str(catalog), "--port", str(self.port)],
            env=clean,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()  # also when waiting for it failed: never leave a server running

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> None:
        import time

        import httpx

        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log()}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"server not ready:\n{self.log()}")
            time.sleep(0.2)

    def kill9(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=20)
        self._log.close()

    def stop(self) -> None:
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
