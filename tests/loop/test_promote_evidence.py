"""``promote --evidence online|ope``: the gate at its margin, and the OPE gate with real models.

Expected values are derived here from the logged counts (the Wald bound written out) or from
the gate's own definition on two identical models, never copied from an earlier run."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from features.catalog import Catalog
from models.decide import Decider
from service.app import create_app
from service.experiments import Arm
from service.settings import Settings
from tests.service.helpers import CATALOG, FakeScorer

T0 = 1_750_000_000.0
Z95 = 1.959963984540054  # the 97.5% normal quantile


def _factory(catalog: Catalog, arm: Arm) -> Decider:
    version = {"control": "1", "candidate": "2"}[arm.name]
    return Decider(catalog, arm.policy, scorer=FakeScorer(catalog), model_version=version)


def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("NEXTSTEP_DATABASE_URL", "NEXTSTEP_CATALOG", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("NEXTSTEP_HOME", str(home))
    return home


@pytest.fixture
def mixed_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """60 users over two arms; user i accepts every offer when ``i % 5 < k`` (k = 4 for the
    control arm, 1 for the candidate), else declines every offer. Yields what each arm's users
    did, counted here from the responses."""
    home = _isolated_home(tmp_path, monkeypatch)
    cat = tmp_path / "catalog.yaml"
    cat.write_text(yaml.safe_dump(CATALOG), encoding="utf-8")
    exp = tmp_path / "experiments.yaml"
    arms = [{"name": "control", "policy": "greedy"}, {"name": "candidate", "policy": "greedy"}]
    exp.write_text(yaml.safe_dump({"name": "t", "arms": arms}), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'store' / 'service.db'}"
    settings = Settings(home=home, catalog=cat, database_url=url, experiments=exp)
    users: dict[str, list[bool]] = {"control": [], "candidate": []}
    with TestClient(create_app(settings, decider_factory=_factory)) as client:
        for i in range(60):
            arm, converted = None, False
            for k in range(6):
                body = {"user_id": f"m{i}", "ts": T0 + 3600 * (10 * i + k)}
                d = client.post("/v1/next-step", json=body).json()
                if d["step"] is None:
                    break
                arm = d["arm"]
                accepts = i % 5 < (4 if arm == "control" else 1)
                result = "accepted" if accepts else "declined"
                r = client.post(
                    "/v1/outcomes", json={"decision_id": d["decision_id"], "outcome": result}
                )
                assert r.status_code == 201
                converted = converted or (accepts and d["step"] == "purchase")
            assert arm is not None
            users[arm].append(converted)
    monkeypatch.setenv("NEXTSTEP_DATABASE_URL", url)
    yield {"catalog": cat, "users": users}


def _two_versions() -> None:
    from training import tracking

    client = tracking.client()
    client.create_registered_model(tracking.MODEL_NAME)
    for _ in range(2):
        client.create_model_version(tracking.MODEL_NAME, source="file:///nonexistent", run_id=None)
    tracking.set_alias(tracking.CHAMPION, "1")


def test_online_gate_decides_at_its_margin(mixed_store: dict[str, Any]) -> None:
    from loop.promote import promote_with_evidence
    from training import tracking

    cand, ctl = mixed_store["users"]["candidate"], mixed_store["users"]["control"]
    x1, n1, x0, n0 = sum(cand), len(cand), sum(ctl), len(ctl)
    assert n1 >= 10 and n0 >= 10 and 0 < x1 / n1 < x0 / n0 < 1  # a worse, uncertain candidate
    p1, p0 = x1 / n1, x0 / n0
    low = (p1 - p0) - Z95 * math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    tracking.setup()
    _two_versions()
    refused = promote_with_evidence("2", "online", -low - 1e-4, catalog=mixed_store["catalog"])
    assert not refused.promote, refused.reason
    assert tracking.alias_version(tracking.CHAMPION) == "1"
    promoted = promote_with_evidence("2", "online", -low + 1e-4, catalog=mixed_store["catalog"])
    assert promoted.promote, promoted.reason
    assert tracking.alias_version(tracking.CHAMPION) == "2"


# -- OPE: two registered versions of one trained model -----------------------------------------
@pytest.fixture(scope="module")
def ope_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A small simulated log trained twice with one seed (versions 1 and 2: the same model),
    version 1 champion; and a service store of decisions by a random policy (exact
    propensities) on that world's catalog, with seeded outcomes."""
    from nextstep.cli.commands import train_command
    from simulation.simulate import write_simulation
    from simulation.worlds import load_world

    base = tmp_path_factory.mktemp("ope-evidence")
    mp = pytest.MonkeyPatch()
    for name in ("NEXTSTEP_DATABASE_URL", "NEXTSTEP_CATALOG"):
        mp.delenv(name, raising=False)
    home = base / "home"
    mp.setenv("NEXTSTEP_HOME", str(home))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home}/mlflow.db")
    try:
        world = load_world("ladder")
        write_simulation(world, 400, 3, base / "sim")
        events, cat = base / "sim" / "events.csv", base / "sim" / "catalog.yaml"
        first = train_command(events=events, catalog=cat, promote=True, seed=0)
        second = train_command(events=events, catalog=cat, promote=False, seed=0)
        assert (first.version, second.version) == ("1", "2")
        url = f"sqlite:///{base / 'store' / 'service.db'}"
        settings = Settings(home=home, catalog=cat, database_url=url, policy="random")
        rng = np.random.default_rng(5)
        with TestClient(create_app(settings)) as client:
            for i in range(80):
                for k in range(4):
                    body = {"user_id": f"o{i}", "ts": T0 + 3600 * (10 * i + k)}
                    d = client.post("/v1/next-step", json=body).json()
                    if d["step"] is None:
                        break
                    result = "accepted" if rng.random() < 0.6 else "declined"
                    r = client.post(
                        "/v1/outcomes", json={"decision_id": d["decision_id"], "outcome": result}
                    )
                    assert r.status_code == 201
        mp.setenv("NEXTSTEP_DATABASE_URL", url)
        yield {"catalog": cat, "home": home}
    finally:
        mp.undo()


@pytest.mark.slow
def test_ope_gate_refuses_an_equal_candidate_inside_its_interval(
    ope_home: dict[str, Any],
) -> None:
    """The OPE gate is conservative: ``low(V) - high(champion) > -margin``. Two copies of one
    model have the same estimate, so the bound is minus the interval's width: refused at a
    margin just under that width, promoted just over it."""
    from loop.promote import ope_evidence, promote_with_evidence
    from training import tracking

    tracking.setup()
    assert tracking.alias_version(tracking.CHAMPION) == "1"
    ev = ope_evidence("2", 0.0, catalog=ope_home["catalog"])
    assert ev.candidate == ev.control  # the same model: the same estimate
    width = ev.detail["candidate_high"] - ev.detail["candidate_low"]
    assert width > 0 and ev.low == pytest.approx(-width)
    assert ev.detail["rows"] > 100
    refused = promote_with_evidence("2", "ope", 0.0, catalog=ope_home["catalog"])
    assert not refused.promote and "ope evidence" in refused.reason
    refused = promote_with_evidence("2", "ope", width - 1e-6, catalog=ope_home["catalog"])
    assert not refused.promote
    assert tracking.alias_version(tracking.CHAMPION) == "1"
    promoted = promote_with_evidence("2", "ope", width + 1e-6, catalog=ope_home["catalog"])
    assert promoted.promote, promoted.reason
    assert tracking.alias_version(tracking.CHAMPION) == "2"
    tracking.set_alias(tracking.CHAMPION, "1")  # as the fixture made it, for the next test


@pytest.mark.slow
def test_promote_ope_command_refuses_with_exit_1(ope_home: dict[str, Any]) -> None:
    from typer.testing import CliRunner

    from nextstep.cli.app import app
    from training import tracking

    r = CliRunner().invoke(
        app,
        ["promote", "--version", "2", "--evidence", "ope", "--catalog", str(ope_home["catalog"])],
    )
    assert r.exit_code == 1, r.output
    assert "refused" in r.output and "ope evidence" in r.output
    assert tracking.alias_version(tracking.CHAMPION) == "1"
