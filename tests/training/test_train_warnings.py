"""``nextstep train`` says so when the result is suspect: too little data, or a logistic baseline
that beats LightGBM on the holdout (printed and tagged on the MLflow run), and which readiness
model the bundle serves then."""

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
    assert "serves LightGBM all the same" in w
    (w,) = training_warnings(_metrics(0.590, 0.551), ENOUGH, served="logistic")
    assert "serves the logistic model as --readiness-model asked" in w


def test_missing_metrics_are_not_a_warning() -> None:
    assert training_warnings({"lgbm": {"logloss": float("nan")}}, ENOUGH) == []


@pytest.mark.slow
def test_train_on_seven_rows_warns_and_tags_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from nextstep.cli.commands import train_command
    from training import tracking

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


@pytest.mark.slow
def test_auto_serves_a_better_logistic_baseline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a small log LightGBM overfits: with ``--readiness-model auto`` the registered model's
    readiness is then the logistic baseline, recorded on the run, the version and the bundle,
    and loaded by the service's model loader with the baseline's holdout numbers."""
    import numpy as np

    from features.catalog import load_catalog
    from models.linear import is_linear
    from nextstep.cli.commands import train_command
    from simulation.simulate import write_simulation
    from simulation.worlds import load_world
    from training import tracking
    from training.modelio import load_model_bundle
    from training.pipeline import SERVED_TAG

    monkeypatch.setenv("NEXTSTEP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tmp_path / "data"
    write_simulation(load_world("ladder"), 80, 3, data)
    result = train_command(
        events=data / "events.csv", catalog=data / "catalog.yaml", readiness_model="auto"
    )
    lgbm, logreg = result.metrics["lgbm"]["logloss"], result.metrics["logreg"]["logloss"]
    assert logreg < lgbm  # the premise: on 80 users the baseline wins
    assert result.readiness_model == "logistic"
    assert tracking.client().get_run(result.run_id).data.tags[SERVED_TAG] == "logistic"
    tags = tracking.client().get_model_version("nextstep", result.version).tags
    assert tags["readiness_model"] == "logistic"
    assert float(tags["holdout_logloss"]) == pytest.approx(logreg, abs=1e-6)
    bundle, _ = load_model_bundle(f"models:/nextstep/{result.version}")
    assert is_linear(bundle.readiness) and bundle.meta["readiness_model"] == "logistic"
    catalog = load_catalog(data / "catalog.yaml")
    from features.state import UserState
    from models.bundle import ModelScorer

    p = ModelScorer(bundle, catalog).p_accept(UserState(), list(range(catalog.n)), 0.0, {})
    assert np.all((p > 0) & (p < 1)) and np.ptp(p) > 0  # steps differ in readiness


def test_a_better_lightgbm_keeps_serving_lightgbm() -> None:
    """``auto`` swaps only on a strictly lower baseline log loss; ``lightgbm`` never does."""
    import numpy as np

    from features.spec import FeatureSpec
    from models.readiness import LogisticBaseline, fit_bundle
    from training.pipeline import TrainingOutcome, serve_better_readiness

    rng = np.random.default_rng(0)
    spec = FeatureSpec()
    X = rng.normal(size=(300, len(spec.names)))
    y = (X[:, 0] > 0).astype(int)
    bundle = fit_bundle(
        X, y, y == 0, y == 1, np.zeros(300, bool), spec, typical_gap_hours=24.0, n_jobs=1
    )
    baseline = LogisticBaseline().fit(X, y)
    tree = bundle.readiness

    def outcome(lgbm: float, logreg: float) -> TrainingOutcome:
        return TrainingOutcome(
            bundle=bundle,
            baseline=baseline,
            spec=spec,
            holdout=np.zeros(300, bool),
            metrics=_metrics(lgbm, logreg),
            y=y,
            predictions={},
            stage=y,
            params={},
            typical_gap_hours=24.0,
            example=None,  # type: ignore[arg-type]
        )

    assert serve_better_readiness(outcome(0.50, 0.49), "lightgbm") == "lgbm"
    assert serve_better_readiness(outcome(0.50, 0.50), "auto") == "lgbm"
    assert bundle.readiness is tree
    assert serve_better_readiness(outcome(0.50, 0.49), "auto") == "logreg"
    np.testing.assert_allclose(
        bundle.readiness.positive_proba(X), baseline.predict_proba(X)[:, 1], atol=1e-12
    )


@pytest.mark.slow
def test_train_serves_lightgbm_by_default_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """By default ``train`` serves the trees even where the baseline has the lower log loss,
    and the warning says which model the bundle serves; a wrong ``--readiness-model`` is an
    input error (exit 2)."""
    from typer.testing import CliRunner

    from models.linear import is_linear
    from nextstep.cli.app import app
    from nextstep.cli.commands import train_command
    from simulation.simulate import write_simulation
    from simulation.worlds import load_world
    from training.modelio import load_model_bundle

    monkeypatch.setenv("NEXTSTEP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tmp_path / "data"
    write_simulation(load_world("ladder"), 80, 3, data)
    args = {"events": data / "events.csv", "catalog": data / "catalog.yaml"}
    result = train_command(**args)
    assert result.readiness_model == "lightgbm"
    assert result.metrics["logreg"]["logloss"] < result.metrics["lgbm"]["logloss"]
    assert "serves LightGBM all the same" in " ".join(capsys.readouterr().err.split())
    bundle, _ = load_model_bundle(f"models:/nextstep/{result.version}")
    assert not is_linear(bundle.readiness)
    bad = CliRunner().invoke(
        app,
        [
            "train",
            "--events",
            str(args["events"]),
            "--catalog",
            str(args["catalog"]),
            "--readiness-model",
            "forest",
        ],
    )
    assert bad.exit_code == 2 and "--readiness-model must be one of" in bad.output
