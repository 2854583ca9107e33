"""``compose.yaml`` runs the learning loop beside the service: a ``learner`` on the service's own
store and registry, with an account that may promote, and a service that polls the champion
alias so a promotion reaches every worker without a restart."""

from __future__ import annotations

from typing import Any

from tests.scale.test_compose_secrets import FULL, _config


def _services() -> dict[str, Any]:
    return _config(FULL)["services"]


def test_the_learner_runs_nextstep_learn_on_the_services_store_and_registry() -> None:
    s = _services()
    learner, service = s["learner"], s["nextstep"]
    assert learner["entrypoint"] == ["nextstep"] and learner["command"][0] == "learn"
    cmd = learner["command"]
    assert cmd[cmd.index("--catalog") + 1] == "/config/catalog.yaml"
    assert any(v.endswith(":/config/catalog.yaml:ro") for v in learner["volumes"])
    env, senv = learner["environment"], service["environment"]
    assert env["NEXTSTEP_DATABASE_URL"] == senv["NEXTSTEP_DATABASE_URL"]
    assert env["MLFLOW_TRACKING_URI"] == senv["MLFLOW_TRACKING_URI"]
    assert env["MLFLOW_TRACKING_USERNAME"] == "admin", "promoting needs the registry's writer"
    assert env["MLFLOW_TRACKING_PASSWORD"] == FULL["MLFLOW_ADMIN_PASSWORD"]
    assert "ports" not in learner


def test_the_service_picks_a_promoted_champion_up_by_itself() -> None:
    env = _services()["nextstep"]["environment"]
    assert float(env["NEXTSTEP_RELOAD_INTERVAL"]) > 0
