"""``rollout``, ``report``, ``export`` and ``retrain`` run as commands (Typer's runner), on a
small service store made through the HTTP API: exit codes, files written and values checked
against what the store holds or against the simulator's exact numbers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from features.catalog import load_catalog
from features.events import load_events
from service.app import create_app
from service.settings import Settings
from tests.service.helpers import CATALOG

T0 = 1_750_000_000.0


def _cli(*args: str) -> Any:
    from nextstep.cli.app import app

    return CliRunner().invoke(app, list(args))


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private home (MLflow, store) and the test catalog; returns the catalog path."""
    for name in ("NEXTSTEP_DATABASE_URL", "NEXTSTEP_CATALOG", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NEXTSTEP_HOME", str(tmp_path / "home"))
    cat = tmp_path / "catalog.yaml"
    cat.write_text(yaml.safe_dump(CATALOG), encoding="utf-8")
    return cat


def _serve(
    env: Path, tmp_path: Path, users: int, outcomes: bool, agreeable: range = range(0)
) -> dict[str, int]:
    """Decisions by the ladder policy (and their outcomes: alternately accepted/declined, all
    accepted for the users in ``agreeable``); returns how many of each the store was given."""
    url = f"sqlite:///{tmp_path / 'home' / 'service.db'}"
    settings = Settings(home=tmp_path / "home", catalog=env, database_url=url, policy="ladder")
    counts = {"decisions": 0, "outcomes": 0}
    with TestClient(create_app(settings)) as client:
        for i in range(users):
            for k in range(3):
                body = {"user_id": f"u{i}", "ts": T0 + 3600 * (10 * i + k)}
                d = client.post("/v1/next-step", json=body).json()
                if d["step"] is None:
                    break
                counts["decisions"] += 1
                if outcomes:
                    yes = i in agreeable or (i + k) % 2 == 0
                    result = "accepted" if yes else "declined"
                    r = client.post(
                        "/v1/outcomes",
                        json={"decision_id": d["decision_id"], "outcome": result},
                    )
                    assert r.status_code == 201
                    counts["outcomes"] += 1
    return counts


def test_export_command_writes_one_valid_row_per_outcome(env: Path, tmp_path: Path) -> None:
    counts = _serve(env, tmp_path, users=12, outcomes=True)
    out = tmp_path / "export.csv"
    r = _cli("export", "--out", str(out), "--catalog", str(env))
    assert r.exit_code == 0, r.output
    log = load_events(out, load_catalog(env))  # valid against the catalog
    assert log.n_rows == counts["outcomes"]
    assert set(log.frame["outcome"]) == {"accepted", "declined"}
    assert (log.frame["policy"] == "ladder").all()


def test_export_and_report_refuse_an_empty_store(env: Path, tmp_path: Path) -> None:
    _serve(env, tmp_path, users=0, outcomes=False)  # migrated, nothing in it
    r = _cli("report", "--catalog", str(env))
    assert r.exit_code == 2 and "error:" in r.output and "Traceback" not in r.output
    r = _cli("export", "--out", str(tmp_path / "e.csv"), "--catalog", str(env))
    assert r.exit_code == 2 and "error:" in r.output


def test_report_command_counts_what_the_store_holds(env: Path, tmp_path: Path) -> None:
    from training import tracking

    counts = _serve(env, tmp_path, users=10, outcomes=True)
    r = _cli("report", "--catalog", str(env))
    assert r.exit_code == 0, r.output
    client = tracking.client()
    exp = client.get_experiment_by_name(tracking.EXPERIMENT_ONLINE)
    [run] = client.search_runs([exp.experiment_id])
    metrics = run.data.metrics
    decisions = [v for k, v in metrics.items() if k.endswith(".decisions")]
    assert decisions == [counts["decisions"]]  # one arm, which made every decision
    assert [v for k, v in metrics.items() if k.endswith(".users")] == [10]
    accepted = sum(1 for i in range(10) for k in range(3) if (i + k) % 2 == 0)
    rates = [v for k, v in metrics.items() if k.endswith(".accept_rate")]
    assert rates == [pytest.approx(accepted / counts["outcomes"])]


def test_retrain_without_outcomes_is_refused_clearly(env: Path, tmp_path: Path) -> None:
    from training import tracking

    _serve(env, tmp_path, users=5, outcomes=False)
    r = _cli("retrain", "--catalog", str(env))
    assert r.exit_code == 2, r.output
    assert "error:" in r.output and "Traceback" not in r.output
    assert not tracking.registry_exists() or tracking.alias_version(tracking.CHAMPION) is None


@pytest.fixture
def rollout_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("NEXTSTEP_HOME", str(tmp_path / "home"))
    yield tmp_path / "rollout.json"


def test_rollout_command_in_process_agrees_with_the_exact_value(rollout_json: Path) -> None:
    from simulation.regret import RegretMeter, fixed_rule_choosers
    from simulation.rollout import Metered, run_users
    from simulation.simulate import ExactSolver, TypeBlindReference
    from simulation.worlds import load_world

    r = _cli(
        "rollout", "--world", "ladder", "--policy", "ladder", "--users", "400", "--seed", "3",
        "--json", str(rollout_json),
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    out = json.loads(rollout_json.read_text())
    exact = ExactSolver(load_world("ladder")).table()
    res = out["result"]
    assert res["errors"] == 0 and res["invalid"] == 0
    assert abs(res["conversion"] - exact["ladder"]["overall"]) <= 4 * res["se"] + 1e-9
    assert out["reference"]["optimum"] == pytest.approx(exact["optimum"]["overall"])
    assert out["ratio_to_optimum"] == pytest.approx(res["conversion"] / exact["optimum"]["overall"])
    # the type-blind reference walks the rollout's own users (common random numbers)
    paired, _ = TypeBlindReference(load_world("ladder")).monte_carlo(400, 3)
    assert out["reference"]["type_blind"] == paired
    # and every decision scored (simulation.regret): the ladder rule's regret on these users
    world = load_world("ladder")
    meter = RegretMeter(world)
    run_users(world, 400, 3, Metered(world, fixed_rule_choosers(world, 0)["ladder"], meter))
    regret = out["regret"]
    assert regret["mean"] == pytest.approx(meter.summary()[0]) and regret["mean"] > 0
    assert regret["to_type_blind"] == pytest.approx(regret["mean"] / paired)
    assert "regret per user" in r.output


def test_rollout_command_needs_a_base_or_a_policy(rollout_json: Path) -> None:
    r = _cli("rollout", "--world", "ladder", "--users", "10")
    assert r.exit_code == 2 and "--base" in r.output and "--policy" in r.output


class _KeyRecorder(BaseHTTPRequestHandler):
    """A real HTTP endpoint that records each request's ``X-API-Key`` and answers 401."""

    seen: ClassVar[list[str | None]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).seen.append(self.headers.get("X-API-Key"))
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_rollout_takes_the_client_key_from_the_environment_only(
    rollout_json: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key on the command line would show in ``ps``: ``--api-key`` is refused (exit 2, the
    value never used), and the key in NEXTSTEP_API_KEY is what reaches the service."""
    r = _cli("rollout", "--world", "ladder", "--users", "2", "--base", "http://127.0.0.1:9",
             "--api-key", "on-the-command-line")  # fmt: skip
    assert r.exit_code == 2 and "--api-key" in r.output
    assert "--api-key" not in _cli("rollout", "--help").output

    _KeyRecorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KeyRecorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setenv("NEXTSTEP_API_KEY", "from-the-env-123")
        r = _cli("rollout", "--world", "ladder", "--users", "3", "--base", base,
                 "--concurrency", "1", "--json", str(rollout_json))  # fmt: skip
        assert r.exit_code == 0, r.output
        monkeypatch.delenv("NEXTSTEP_API_KEY")
        n_keyed = len(_KeyRecorder.seen)
        r = _cli("rollout", "--world", "ladder", "--users", "2", "--base", base,
                 "--concurrency", "1")  # fmt: skip
        assert r.exit_code == 0, r.output
    finally:
        server.shutdown()
        server.server_close()
    # every user stops at its first refused next-step: one request each
    assert _KeyRecorder.seen == ["from-the-env-123"] * 3 + [None] * 2 and n_keyed == 3
    assert json.loads(rollout_json.read_text())["result"]["errors"] == 3


@pytest.mark.slow
def test_retrain_refused_by_the_gate_keeps_the_champion(env: Path, tmp_path: Path) -> None:
    """A candidate the log-loss gate refuses leaves the champion serving, and the command
    says so with exit 1 (a refused promotion). The candidate learns from the last 14 users
    only (``--since``), most of whom accept everything (users 66-73), while its holdout, the
    latest users, answers as the champion learned: on that holdout it is worse."""
    from datetime import UTC, datetime

    from training import tracking

    _serve(env, tmp_path, users=80, outcomes=True, agreeable=range(66, 74))
    first = _cli("retrain", "--catalog", str(env))
    assert first.exit_code == 0, first.output
    assert "promoted to champion" in first.output
    client = tracking.client()
    champion = client.get_model_version_by_alias("nextstep", "champion").version
    since = datetime.fromtimestamp(T0 + 3600 * 10 * 66, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    second = _cli("retrain", "--catalog", str(env), "--since", since)
    assert second.exit_code == 1, second.output
    assert "not promoted" in second.output
    assert "log loss" in second.output  # refused by the gate, not failed for another reason
    assert client.get_model_version_by_alias("nextstep", "champion").version == champion
    assert len(client.search_model_versions("name='nextstep'")) == 2  # registered, not served
