"""End to end, the way a new user meets nextstep: `nextstep demo` (what `make run` calls).

Simulates demo data, trains and promotes a model, starts the real server on a free port and
talks HTTP to it; a second start reuses the data and the champion instead of retraining.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

NS = str(Path(sys.executable).with_name("nextstep"))

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(home: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "NEXTSTEP_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("NEXTSTEP_DATABASE_URL", None)
    return subprocess.Popen(
        [NS, "demo", "--world", "eager", "--users", "600", "--port", str(port)],
        env=env,
        stdout=open(home / f"demo-{port}.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_ready(base: str, proc: subprocess.Popen, home: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            logs = "\n".join(p.read_text()[-3000:] for p in home.glob("demo-*.log"))
            raise AssertionError(f"demo exited with {proc.returncode}:\n{logs}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("service did not become ready")


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_demo_simulates_trains_serves_and_reuses(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(home, port)
    try:
        _wait_ready(base, proc, home)
        ready = httpx.get(f"{base}/readyz").json()
        # no policy configured: the champion's recommended policy (planner without one)
        assert ready["model"] == "1" and ready["policy"] in (
            "ladder",
            "big_ask",
            "greedy",
            "planner",
        )

        body = {
            "user_id": "e2e-1",
            "context": {"channel": "search", "device": "desktop"},
            "ts": "2025-03-04T10:11:12Z",
        }
        r = httpx.post(f"{base}/v1/next-step", json=body)
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["model_version"] == "1" and d["policy"] == ready["policy"]
        steps = {s["id"]: s for s in httpx.get(f"{base}/v1/steps").json()["steps"]}
        assert d["step"] in steps and 0 < d["p_accept"] < 1 and 0 < d["propensity"] <= 1
        assert {c["step"] for c in d["candidates"]} <= set(steps)

        r = httpx.post(
            f"{base}/v1/outcomes",
            json={
                "decision_id": d["decision_id"],
                "outcome": "accepted",
                "ts": "2025-03-04T10:12:00Z",
            },
        )
        assert r.status_code == 201, r.text
        user = httpx.get(f"{base}/v1/users/e2e-1").json()
        assert [h["step"] for h in user["history"]] == [d["step"]]
        assert d["step"] not in user["eligible"]
        if steps[d["step"]]["stage"] == "convert":
            assert user["converted"] is True
            again = httpx.post(f"{base}/v1/next-step", json={**body, "ts": "2025-03-05T00:00:00Z"})
            assert again.json()["step"] is None and again.json()["reason"] == "converted"
    finally:
        _stop(proc)

    assert (home / "demo" / "events.csv").exists()
    before = (home / "demo" / "events.csv").stat().st_mtime_ns
    port2 = _free_port()
    proc = _start(home, port2)
    try:
        _wait_ready(f"http://127.0.0.1:{port2}", proc, home)
        assert httpx.get(f"http://127.0.0.1:{port2}/readyz").json()["model"] == "1"
    finally:
        _stop(proc)
    assert (home / "demo" / "events.csv").stat().st_mtime_ns == before
