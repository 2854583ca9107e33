"""``nextstep report``'s watch figures from a real store: the explored share and the accept
rates of explored and policy-chosen offers (the cost of the exploration budget), calibration
per arm and step, and the outcome delay."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from loop.report import report_command
from service.app import create_app
from service.settings import Settings
from tests.service.helpers import CATALOG, fake_factory

T0 = 1_750_000_000.0


def test_report_shows_exploration_cost_calibration_and_delay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("NEXTSTEP_DATABASE_URL", "NEXTSTEP_CATALOG", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("NEXTSTEP_HOME", str(home))
    cat = tmp_path / "catalog.yaml"
    cat.write_text(yaml.safe_dump(CATALOG), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'store' / 'service.db'}"
    settings = Settings(
        home=home, catalog=cat, database_url=url, policy="greedy", exploration="epsilon=0.6"
    )
    factory = fake_factory("4", {"read_intro": 0.9, "watch_clip": 0.2})
    n = 300
    with TestClient(create_app(settings, decider_factory=factory)) as client:
        for i in range(n):  # users take the intro and nothing else, 10 minutes later
            d = client.post("/v1/next-step", json={"user_id": f"u{i}", "ts": T0 + i}).json()
            outcome = "accepted" if d["step"] == "read_intro" else "declined"
            body = {"decision_id": d["decision_id"], "outcome": outcome, "ts": T0 + i + 600}
            assert client.post("/v1/outcomes", json=body).status_code == 201
    monkeypatch.setenv("NEXTSTEP_DATABASE_URL", url)
    rep = report_command(catalog=cat)
    (e,) = rep.exploration
    assert e.arm == "champion" and e.offers == n
    # epsilon 0.6 over the new user's eligible steps: about 0.6 * (k - 1) / k explore
    assert 0.15 < e.explored_share < 0.6
    assert e.explored_share_low < e.explored_share < e.explored_share_high
    assert e.explored_accept_rate == 0.0 and e.policy_accept_rate == 1.0
    assert e.exploration_cost == pytest.approx(e.explored_share)
    assert e.exploration_cost_low <= e.exploration_cost <= e.exploration_cost_high
    assert e.delay_p50_s == 600.0 and e.delay_p90_s == 600.0
    by_step = {(c.arm, c.step): c for c in rep.calibration}
    intro = by_step[("champion", "read_intro")]
    assert intro.offers == min(200, n - e.explored)
    assert intro.observed == 1.0 and intro.error == pytest.approx(0.1)
    assert all(c.offers <= 200 for c in rep.calibration)  # the window
    others = [c for k, c in by_step.items() if k[1] != "read_intro"]
    assert others and all(c.observed == 0.0 and c.error < 0 for c in others)
    out = capsys.readouterr().out
    for header in ("accept rate explored", "accept rate policy", "accepts lost per offer"):
        assert header in out
    assert "observed - predicted" in out and "+10.0 pp" in out
    assert not math.isnan(e.explored_share_low)
