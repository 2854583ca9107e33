"""``nextstep report`` (per-arm metrics with intervals and the test against control, read back
from MLflow) and ``promote --evidence online|ope`` refusing a candidate that is worse."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from features.catalog import Catalog
from loop.report import report_command, two_proportion, wilson
from models.decide import Decider
from service.app import create_app
from service.experiments import Arm
from service.settings import Settings
from tests.service.helpers import CATALOG, FakeScorer

T0 = 1_750_000_000.0


def _factory(catalog: Catalog, arm: Arm) -> Decider:
    version = {"control": "1", "candidate": "2"}[arm.name]
    return Decider(catalog, arm.policy, scorer=FakeScorer(catalog), model_version=version)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """40 users over two arms: control users accept everything, candidate users decline."""
    for name in ("NEXTSTEP_DATABASE_URL", "NEXTSTEP_CATALOG", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("NEXTSTEP_HOME", str(home))
    cat = tmp_path / "catalog.yaml"
    cat.write_text(yaml.safe_dump(CATALOG), encoding="utf-8")
    exp = tmp_path / "experiments.yaml"
    arms = [{"name": "control", "policy": "greedy"}, {"name": "candidate", "policy": "greedy"}]
    exp.write_text(yaml.safe_dump({"name": "t", "arms": arms}), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'store' / 'service.db'}"
    settings = Settings(home=home, catalog=cat, database_url=url, experiments=exp)
    with TestClient(create_app(settings, decider_factory=_factory)) as client:
        for i in range(40):
            for k in range(6):
                body = {"user_id": f"u{i}", "ts": T0 + 3600 * (10 * i + k)}
                d = client.post("/v1/next-step", json=body).json()
                if d["step"] is None:
                    break
                result = "accepted" if d["arm"] == "control" else "declined"
                r = client.post(
                    "/v1/outcomes", json={"decision_id": d["decision_id"], "outcome": result}
                )
                assert r.status_code == 201
    monkeypatch.setenv("NEXTSTEP_DATABASE_URL", url)
    yield url, cat


def test_intervals_and_z_test() -> None:
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    t = two_proportion(30, 100, 20, 100)
    assert t["diff"] == pytest.approx(0.1)
    assert t["z"] == pytest.approx(1.6330, abs=1e-3) and t["p"] == pytest.approx(0.1025, abs=1e-3)


def test_report_per_arm_and_logged_to_mlflow(store: tuple[str, Path]) -> None:
    from mlflow import MlflowClient

    from training import tracking

    _, cat = store
    rep = report_command(catalog=cat, control="control")
    ctl, cand = rep.arm("control"), rep.arm("candidate")
    assert ctl.users + cand.users == 40 and ctl.users > 5 and cand.users > 5
    assert ctl.conversion == 1.0 and ctl.accept_rate == 1.0 and cand.conversion == 0.0
    assert ctl.asks_per_conversion == ctl.offers / ctl.converted > 1
    assert ctl.conversion_low < 1.0 and cand.accept_rate == 0.0
    assert cand.vs_control["diff"] == -1.0 and cand.vs_control["p"] < 1e-3
    assert ctl.model_versions == ["1"] and cand.model_versions == ["2"]

    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    exp = client.get_experiment_by_name("nextstep-online")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    m = runs[0].data.metrics
    assert m["control.conversion"] == 1.0 and m["candidate.conversion"] == 0.0
    assert m["candidate.vs_control.p"] < 1e-3
    names = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"conversion.png", "report.json", "report.csv"} <= names


def _registry() -> None:
    """Two registered versions without training (the evidence needs only their numbers)."""
    from training import tracking

    client = tracking.client()
    client.create_registered_model(tracking.MODEL_NAME)
    for _ in range(2):
        client.create_model_version(tracking.MODEL_NAME, source="file:///nonexistent", run_id=None)
    tracking.set_alias(tracking.CHAMPION, "1")


def test_promote_online_refuses_a_worse_candidate(store: tuple[str, Path]) -> None:
    from loop.promote import promote_command, promote_with_evidence
    from training import tracking

    _, cat = store
    _registry()
    with pytest.raises(SystemExit) as exc:
        promote_command("2", evidence="online", margin=0.05, catalog=cat)
    assert exc.value.code == 1
    assert tracking.alias_version(tracking.CHAMPION) == "1"
    d = promote_with_evidence("2", "online", 0.05, catalog=cat)
    assert not d.promote and "online evidence" in d.reason
    # the evidence is logged
    client = tracking.client()
    exp = client.get_experiment_by_name("nextstep-online")
    runs = client.search_runs([exp.experiment_id], "tags.decision = 'refused'")
    assert len(runs) == 2 and runs[0].data.metrics["diff_low"] < -0.05
    # the other direction: with version 2 as champion, version 1 (the better arm) is promoted
    tracking.set_alias(tracking.CHAMPION, "2")
    assert promote_with_evidence("1", "online", 0.0, catalog=cat).promote


def test_promote_ope_needs_a_champion_and_data(store: tuple[str, Path]) -> None:
    from loop.promote import PromotionError, promote_with_evidence

    _, cat = store
    with pytest.raises(PromotionError, match="no model registry"):
        promote_with_evidence("2", "ope", 0.0, catalog=cat)
    # a registry but no champion: nothing to compare with
    from training import tracking

    client = tracking.client()
    client.create_registered_model(tracking.MODEL_NAME)
    for _ in range(2):
        client.create_model_version(tracking.MODEL_NAME, source="file:///nonexistent", run_id=None)
    with pytest.raises(PromotionError, match="no champion"):
        promote_with_evidence("2", "ope", 0.0, catalog=cat)
    assert tracking.alias_version(tracking.CHAMPION) is None  # nothing was promoted


def test_promote_ope_refuses_without_outcomes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A champion, but a store with decisions and no outcomes: no off-policy evidence."""
    from features.errors import NextstepError
    from loop.promote import promote_with_evidence
    from training import tracking

    for name in ("NEXTSTEP_DATABASE_URL", "NEXTSTEP_CATALOG", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("NEXTSTEP_HOME", str(home))
    cat = tmp_path / "catalog.yaml"
    cat.write_text(yaml.safe_dump(CATALOG), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'store' / 'service.db'}"
    settings = Settings(home=home, catalog=cat, database_url=url, policy="ladder")
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/next-step", json={"user_id": "n1"}).status_code == 200
    monkeypatch.setenv("NEXTSTEP_DATABASE_URL", url)
    tracking.setup()
    _registry()
    with pytest.raises(NextstepError, match=r"no outcomes|no data rows"):
        promote_with_evidence("2", "ope", 0.0, catalog=cat)
    assert tracking.alias_version(tracking.CHAMPION) == "1"


def test_the_report_table_is_not_cut_at_80_columns(
    store: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, cat = store
    report_command(catalog=cat, control="control")
    out = capsys.readouterr().out
    assert "…" not in out
    assert "Δ conversion vs control" in out and "asks/conversion" in out
    assert "100.0% [" in out  # the control arm's conversion with its interval, whole
