"""``nextstep train --refit``: the served models are fitted again on every row once measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from features.catalog import load_catalog
from features.events import load_events
from nextstep.cli.app import app
from nextstep.cli.commands import train_command
from simulation.simulate import write_simulation
from simulation.worlds import load_world
from training.holdout import Holdout
from training.modelio import load_model_bundle


@pytest.mark.slow
def test_refit_serves_models_fitted_on_every_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same log, same seed: the holdout numbers are those of the training rows' fit either way,
    and only the served bundle changes, to one fitted on the holdout rows too."""
    from mlflow import MlflowClient

    home = tmp_path / "home"
    monkeypatch.setenv("NEXTSTEP_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tmp_path / "data"
    write_simulation(load_world("ladder"), 300, 5, data)
    args = {"events": data / "events.csv", "catalog": data / "catalog.yaml"}
    plain = train_command(**args)
    refit = train_command(**args, refit=True)

    frame = load_events(args["events"], load_catalog(args["catalog"])).frame
    accepted = (frame["outcome"] == "accepted").to_numpy()
    train = ~Holdout().mask(frame)
    assert train.sum() < len(frame)
    assert refit.metrics == plain.metrics  # the holdout measured the same training-rows fit

    served, _ = load_model_bundle(f"models:/nextstep/{refit.version}")
    evaluated, _ = load_model_bundle(f"models:/nextstep/{plain.version}")
    assert served.base_rates["accept"] == pytest.approx(accepted.mean())
    assert evaluated.base_rates["accept"] == pytest.approx(accepted[train].mean())
    X = np.random.default_rng(0).uniform(0, 3, size=(50, len(served.spec.names)))
    X[:, served.spec.categorical_indices] = 0
    assert not np.allclose(
        served.readiness.positive_proba(X), evaluated.readiness.positive_proba(X)
    )

    client = MlflowClient(tracking_uri=f"sqlite:///{home}/mlflow.db")
    assert int(client.get_run(refit.run_id).data.params["served_rows"]) == len(frame)
    assert int(client.get_run(plain.run_id).data.params["served_rows"]) == int(train.sum())


def test_refit_with_dask_is_an_input_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_simulation(load_world("ladder"), 20, 1, data)
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--events",
            str(data / "events.csv"),
            "--catalog",
            str(data / "catalog.yaml"),
            "--dask",
            "local",
            "--refit",
        ],
    )
    assert result.exit_code == 2 and "--refit is not available with --dask" in result.output
