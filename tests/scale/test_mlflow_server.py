"""A real ``mlflow server`` (PostgreSQL backend store, proxied artifacts, one worker) as the
registry: train and promote against it, serve the champion from it, promote a second version,
``POST /admin/reload`` and see the service answer with the new ``model_version``.

Nothing touches the server's database or artifact folder directly: training, promotion and the
service only know ``MLFLOW_TRACKING_URI=http://127.0.0.1:PORT`` (docs/design.md section 9).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

pytestmark = [
    pytest.mark.slow,
    pytest.mark.e2e,
    pytest.mark.postgres,
    pytest.mark.xdist_group("postgres"),
]

WORLD = "ladder"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEXTSTEP_", "MLFLOW_"))}
    env.update(extra)
    return env


class Process:
    """A server subprocess with its output in a log file, stopped with SIGTERM."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> None:
        self.log_path = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, url: str, timeout: float = 240.0) -> None:
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"{url}: process exited:\n{self.log()[-4000:]}")
            try:
                if httpx.get(url, timeout=3).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail(f"{url}: not ready:\n{self.log()[-4000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory, postgres_server) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("mlflow-server")
    db = postgres_server.create_database()
    port = _free_port()
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(exe), "server",
        "--backend-store-uri", postgres_server.url_for(db),
        "--artifacts-destination", str(base / "artifacts"),
        "--serve-artifacts",
        "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    env = _clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    server = Process(cmd, env, base / "mlflow.log", base)
    try:
        server.wait_for(f"http://127.0.0.1:{port}/health")
        yield {"uri": f"http://127.0.0.1:{port}", "artifacts": base / "artifacts", "base": base}
    finally:
        server.stop()
        postgres_server.drop_database(db)


def _next_step(base: str, user: str) -> dict[str, Any]:
    r = httpx.post(f"{base}/v1/next-step", json={"user_id": user}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_train_promote_serve_reload_through_mlflow_server(
    mlflow_server, postgres_server, tmp_path, monkeypatch
) -> None:
    from mlflow import MlflowClient

    from nextstep.cli.app import app
    from nextstep.cli.commands import train_command
    from simulation.simulate import write_simulation
    from simulation.worlds import load_world

    uri = mlflow_server["uri"]
    for name in [n for n in os.environ if n.startswith(("NEXTSTEP_", "MLFLOW_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("NEXTSTEP_HOME", str(tmp_path / "trainer-home"))
    world = load_world(WORLD)
    write_simulation(world, 500, 1, tmp_path / "d1")
    write_simulation(world, 700, 2, tmp_path / "d2")
    catalog = tmp_path / "d1" / "catalog.yaml"

    first = train_command(events=tmp_path / "d1" / "events.csv", catalog=catalog, promote=True)
    assert (first.version, first.decision) == ("1", "promoted")

    db = postgres_server.create_database()
    port = _free_port()
    env = _clean_env(
        MLFLOW_TRACKING_URI=uri,
        NEXTSTEP_HOME=str(tmp_path / "service-home"),  # its own cache: loads from the server
        NEXTSTEP_DATABASE_URL=postgres_server.url_for(db),
    )
    exe = Path(sys.executable).with_name("nextstep")
    service = Process(
        [str(exe), "serve", "--catalog", str(catalog), "--port", str(port)],
        env,
        tmp_path / "service.log",
        tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        service.wait_for(f"{base}/readyz")
        ready = httpx.get(f"{base}/readyz", timeout=10).json()
        assert ready["model"] == "1" and ready["arms"][0]["model_source"] == "registry"
        assert _next_step(base, "u-1")["model_version"] == "1"

        second = train_command(events=tmp_path / "d2" / "events.csv", catalog=catalog)
        assert (second.version, second.decision) == ("2", "not_requested")
        assert _next_step(base, "u-2")["model_version"] == "1"  # nothing changes by itself

        res = CliRunner().invoke(app, ["promote", "--version", "2", "--margin", "1"])
        assert res.exit_code == 0, res.output
        assert "version 2 is champion" in res.output
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        assert client.get_model_version_by_alias("nextstep", "champion").version == "2"

        r = httpx.post(f"{base}/admin/reload", timeout=120)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "reloaded"
        assert [a["model_version"] for a in body["arms"]] == ["2"]
        assert _next_step(base, "u-3")["model_version"] == "2"
        assert httpx.get(f"{base}/readyz", timeout=10).json()["model"] == "2"
        again = httpx.post(f"{base}/admin/reload", timeout=120).json()
        assert again["status"] in ("reloaded", "unchanged")
        assert [a["model_version"] for a in again["arms"]] == ["2"]
    finally:
        service.stop()
        postgres_server.drop_database(db)
    assert "Traceback" not in service.log()

    # the artifacts went through the server into its artifact store, the runs into PostgreSQL
    stored = {p.name for p in mlflow_server["artifacts"].rglob("bundle.joblib")}
    assert stored == {"bundle.joblib"}
    assert len(list(mlflow_server["artifacts"].rglob("bundle.joblib"))) == 2
    run = client.get_run(first.run_id)
    assert run.data.params["engine"] == "local" and run.info.artifact_uri.startswith(
        "mlflow-artifacts:"
    )
    cache = tmp_path / "service-home" / "model-cache"
    assert {"1", "2"} <= {p.name for p in cache.iterdir()}  # each version downloaded once
