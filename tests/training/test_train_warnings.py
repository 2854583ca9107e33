"""``nextstep train`` says so when the result is suspect: too little data, or a logistic baseline
that beats LightGBM on the holdout (printed and tagged on the MLflow run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.train_warnings import MIN_ROWS, MIN_USERS, WARNINGS_TAG, training_warnings

ENOUGH = {"rows": MIN_ROWS, "users": MIN_USERS}


def _metrics(lgbm: float, logreg: float) -> dict[str, dict[str, float]]:
    return {"lgbm": {"logloss": lgbm}, "logreg": {"logloss": logreg}}


def test_no_warning_for_enough_data_and_a_better_lightgbm() -> None:
    assert training_warnings(_metrics(0.50, 0.55), ENOUGH) == []


@pytest.mark.parametrize(("rows", "users"), [(7, 2), (MIN_ROWS - 1, 500), (5000, MIN_USERS - 1)])
def test_too_little_data(rows: int, users: int) -> None:
    (w,) = training_warnings(_metrics(0.5, 0.6), {"rows": rows, "users": users})
    assert w.startswith(f"too little data: {rows} rows from {users} users")


def test_a_better_logistic_baseline_is_named_with_both_log_losses() -> None:
    (w,) = training_warnings(_metrics(0.590, 0.551), ENOUGH)
    assert "logistic baseline beats LightGBM" in w and "0.551 vs 0.590" in w


def test_missing_metrics_are_not_a_warning() -> None:
    assert training_warnings({"lgbm": {"logloss": float("nan")}}, ENOUGH) == []


@pytest.mark.slow
def test_train_on_seven_rows_warns_and_tags_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from training import tracking
    from training.commands import train_command

    monkeypatch.setenv("NEXTSTEP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    catalog = tmp_path / "catalog.yaml"
    steps = [
        {"id": "intro", "stage": "start", "effort": 1},
        {"id": "quiz", "stage": "guide", "effort": 2},
        {"id": "buy", "stage": "convert", "effort": 5},
    ]
    catalog.write_text(yaml.safe_dump(steps), encoding="utf-8")
    events = tmp_path / "events.csv"
    events.write_text(
        "user_id,ts,step,outcome\n"
        "a,2025-01-01T00:00:00Z,intro,accepted\na,2025-01-02T00:00:00Z,quiz,declined\n"
        "a,2025-01-03T00:00:00Z,quiz,accepted\na,2025-01-04T00:00:00Z,buy,accepted\n"
        "b,2025-01-05T00:00:00Z,buy,declined\nb,2025-01-06T00:00:00Z,intro,accepted\n"
        "b,2025-01-07T00:00:00Z,quiz,dropped\n",
        encoding="utf-8",
    )
    result = train_command(events=events, catalog=catalog)
    err = capsys.readouterr().err
    assert "warning: too little data: 7 rows from 2 users" in " ".join(err.split())
    run = tracking.client().get_run(result.run_id)
    assert "too little data" in run.data.tags[WARNINGS_TAG]
