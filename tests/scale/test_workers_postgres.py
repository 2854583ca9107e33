"""``nextstep serve --workers 2`` on one real PostgreSQL: stateless workers, one shared store.

A tiny model is trained into a temporary ``NEXTSTEP_HOME`` and served by two uvicorn worker
processes with a two-arm experiment. Simulated users walk the funnel over HTTP (8 at a time);
every answer the client received is then looked up in the database: each acknowledged decision
and outcome is there exactly once and nothing else is, every user kept one arm (the salted-hash
assignment) whichever worker answered, both workers did the work and each built its models
once. Idempotency keys replayed concurrently over fresh connections have one effect.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

pytestmark = [
    pytest.mark.slow,
    pytest.mark.e2e,
    pytest.mark.postgres,
    pytest.mark.xdist_group("postgres"),
]

WORLD = "ladder"
USERS = 150
EXPERIMENT = {
    "name": "workers",
    "salt": "scale-test",
    "arms": [
        {"name": "champion", "policy": "planner", "model": "champion", "weight": 0.5},
        {"name": "ladder", "policy": "ladder", "weight": 0.5},
    ],
}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Recorder:
    """Stands in for ``OverHttp``'s httpx client and keeps every answer the client got."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.lock = threading.Lock()
        self.decisions: list[dict[str, Any]] = []
        self.outcomes: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.failures: list[tuple[str, int, str]] = []

    def post(self, path: str, json: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
        r = self.client.post(path, json=json, **kw)
        with self.lock:
            if path == "/v1/next-step" and r.status_code == 200:
                self.decisions.append(r.json())
            elif path == "/v1/outcomes" and r.status_code == 201:
                self.outcomes.append((json or {}, r.json()))
            else:
                self.failures.append((path, r.status_code, r.text[:300]))
        return r


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def served(tmp_path_factory, postgres_server) -> Iterator[dict[str, Any]]:
    from nextstep.cli.commands import train_command
    from simulation.simulate import write_simulation
    from simulation.worlds import load_world

    base = tmp_path_factory.mktemp("workers")
    home = base / "home"
    data = base / "data"
    write_simulation(load_world(WORLD), 500, 5, data)
    env = {"NEXTSTEP_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db"}
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    try:
        result = train_command(
            events=data / "events.csv", catalog=data / "catalog.yaml", promote=True
        )
    finally:
        mp.undo()
    assert result.version == "1" and result.promoted

    db = postgres_server.create_database()
    db_url = postgres_server.url_for(db)
    experiments = base / "experiments.yaml"
    experiments.write_text(yaml.safe_dump(EXPERIMENT), encoding="utf-8")
    port = _free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NEXTSTEP_")}
    clean.pop("MLFLOW_TRACKING_URI", None)
    clean.update(
        env,
        NEXTSTEP_DATABASE_URL=db_url,
        NEXTSTEP_EXPERIMENTS=str(experiments),
        NEXTSTEP_LOG_LEVEL="INFO",
    )
    log_path = base / "server.log"
    exe = Path(sys.executable).with_name("nextstep")
    cmd = [str(exe), "serve", "--catalog", str(data / "catalog.yaml"), "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*cmd, "--workers", "2"], env=clean, stdout=log, stderr=subprocess.STDOUT, cwd=base
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited:\n{log_path.read_text(errors='replace')}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail(f"server not ready:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.3)
        # /readyz answers as soon as one worker is up: wait until the second has started too
        while log_path.read_text(errors="replace").count("Application startup complete") < 2:
            if time.time() > deadline:
                pytest.fail(f"second worker not ready:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.3)
        text = log_path.read_text(errors="replace")
        workers = sorted(int(x) for x in re.findall(r"Started server process \[(\d+)\]", text))
        yield {"url": url, "db_url": db_url, "proc": proc, "log": log_path, "workers": workers}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        postgres_server.drop_database(db)


def _rows(db_url: str, sql: str) -> list[Any]:
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)).all())
    finally:
        engine.dispose()


def test_two_workers_share_one_postgres(served) -> None:
    from service.experiments import parse_experiment
    from simulation.rollout import OverHttp, run_users
    from simulation.worlds import load_world

    workers = served["workers"]
    assert len(workers) == 2, f"expected 2 uvicorn workers, found {workers}"
    cpu_before = {pid: _cpu_seconds(pid) for pid in workers}

    world = load_world(WORLD)
    step_fn = OverHttp(world, served["url"], concurrency=8)
    recorder = Recorder(step_fn.client)
    step_fn.client = recorder  # type: ignore[assignment]
    result = run_users(world, USERS, 17, step_fn, prefix="pg")
    step_fn.client = recorder.client
    recorder.client.close()

    assert result.errors == 0 and result.invalid == 0, recorder.failures[:5]
    assert recorder.failures == []
    assert result.offers == len(recorder.outcomes) > USERS

    decisions = _rows(
        served["db_url"], "SELECT decision_id, user_id, arm, step, model_version FROM decisions"
    )
    by_id = collections.Counter(d[0] for d in decisions)
    acked = {d["decision_id"]: d for d in recorder.decisions}
    assert len(acked) == len(recorder.decisions)  # ids are unique
    assert max(by_id.values()) == 1
    assert set(by_id) == set(acked)  # every acknowledged decision, exactly once, nothing else
    for did, user_id, arm, step, version in decisions:
        d = acked[did]
        assert (user_id, arm, step, version) == (
            d["user_id"],
            d["arm"],
            d["step"],
            d["model_version"],
        )

    outcomes = _rows(served["db_url"], "SELECT decision_id, outcome FROM outcomes")
    counts = collections.Counter(o[0] for o in outcomes)
    assert max(counts.values()) == 1 and len(outcomes) == len(recorder.outcomes)
    sent = {body["decision_id"]: body["outcome"] for body, _ in recorder.outcomes}
    assert dict(outcomes) == sent

    # sticky arms: one arm per user across both workers, the salted-hash assignment
    experiment = parse_experiment(EXPERIMENT, source="test", default_policy="planner")
    arms: dict[str, set[str]] = collections.defaultdict(set)
    for _, user_id, arm, _, _ in decisions:
        arms[user_id].add(arm)
    assert len(arms) == USERS
    for user_id, seen in arms.items():
        assert seen == {experiment.assign(user_id).name}, user_id
    assert {a for s in arms.values() for a in s} == {"champion", "ladder"}
    versions = {d["model_version"] for d in recorder.decisions if d["arm"] == "champion"}
    assert versions == {"1"}

    # both workers served, each loaded the model exactly once
    # (the kernel spreads connections over the workers, not evenly: ask on fresh connections
    # until each worker has done work since the traffic began, within a deadline)
    deadline = time.monotonic() + 120
    busy = {pid: _cpu_seconds(pid) - cpu_before[pid] for pid in workers}
    while not all(v > 0.05 for v in busy.values()):
        assert time.monotonic() < deadline, f"a worker never served: {busy}"
        with httpx.Client(base_url=served["url"], timeout=10) as fresh:
            fresh.post("/v1/next-step", json={"user_id": f"spread-{time.monotonic_ns()}"})
        busy = {pid: _cpu_seconds(pid) - cpu_before[pid] for pid in workers}
    # each worker built its models once (generation 1) and never reloaded
    for _ in range(12):
        with httpx.Client(base_url=served["url"], timeout=10) as fresh:  # any worker
            metrics = fresh.get("/metrics").text
        assert "nextstep_model_generation 1.0" in metrics
        assert 'nextstep_model_info{arm="champion",model_version="1"' in metrics
    log = served["log"].read_text(errors="replace")
    assert "Traceback" not in log and " 500 " not in log
    # every worker logs through the service's own handler (model swaps at INFO)
    assert log.count("INFO nextstep.service.runtime: serving generation 1") == 2, log[-3000:]


def test_idempotency_keys_hold_across_workers(served) -> None:
    url = served["url"]

    def post(path: str, body: dict[str, Any], key: str) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=30) as fresh:  # a new connection each time
            return fresh.post(path, json=body, headers={"Idempotency-Key": key})

    def replays(path: str, body: dict[str, Any], key: str) -> list[httpx.Response]:
        with ThreadPoolExecutor(6) as pool:
            return list(pool.map(lambda _: post(path, body, key), range(6)))

    for i in range(4):
        uid = f"idem-{i}"
        answers = replays("/v1/next-step", {"user_id": uid, "ts": "2025-03-04T10:11:12Z"}, f"n{i}")
        assert {r.status_code for r in answers} == {200}
        assert len({r.content for r in answers}) == 1  # the first answer, byte for byte
        did = answers[0].json()["decision_id"]
        out = {"decision_id": did, "outcome": "accepted", "ts": "2025-03-04T10:12:00Z"}
        replies = replays("/v1/outcomes", out, f"o{i}")
        assert {r.status_code for r in replies} == {201}
        assert len({r.content for r in replies}) == 1
        rows = _rows(served["db_url"], f"SELECT decision_id FROM decisions WHERE user_id = '{uid}'")
        assert [r[0] for r in rows] == [did]
        rows = _rows(served["db_url"], f"SELECT outcome FROM outcomes WHERE decision_id = '{did}'")
        assert [r[0] for r in rows] == ["accepted"]
