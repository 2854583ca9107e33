"""``nextstep train`` on a log with a 500-value context column: kept, used, printed, logged."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.events import validate_frame, write_events
from nextstep.cli.app import app
from simulation.simulate import generate_log
from simulation.worlds import load_world
from training.pipeline import _write_catalog, fit_and_evaluate


def wide_log(users: int = 500, seed: int = 3) -> tuple[pd.DataFrame, object]:
    """A simulated log plus ``city`` (500 values, one per user group) and a numeric ``age``."""
    world = load_world("eager")
    frame = pd.DataFrame(generate_log(world, users, seed))
    rng = np.random.default_rng(seed)
    codes = pd.factorize(frame["user_id"])[0]
    frame["city"] = [f"city{c % 500:03d}" for c in codes]
    frame["age"] = (20 + rng.integers(0, 50, codes.max() + 1))[codes].astype(float)
    return frame, world.catalog


def test_the_wide_column_is_a_categorical_feature_of_the_model():
    frame, catalog = wide_log()
    log = validate_frame(frame, catalog, source="wide")
    out = fit_and_evaluate(log, catalog, params={"n_estimators": 20})
    spec = out.spec
    assert {"city", "age", "channel", "device"} <= set(spec.context_columns)
    assert "city" in spec.pooled and "age" not in spec.categories
    booster = out.bundle.readiness.booster_
    cat_names = {spec.names[i] for i in spec.categorical_indices}
    assert "ctx_city" in cat_names and "ctx_age" not in cat_names
    # LightGBM was told: a categorical feature's info lists its codes (63 kept + "other"), a
    # numeric one only a range
    infos = booster.dump_model()["feature_infos"]
    names = booster.feature_name()
    city = infos[names[spec.names.index("ctx_city")]]
    assert len(city["values"]) > 40 and 63 in city["values"]  # 63 = "other"
    assert infos[names[spec.names.index("ctx_age")]]["values"] == []
    assert out.metrics["lgbm"]["auc"] > 0.5


@pytest.mark.slow
def test_train_prints_and_logs_each_column(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("NEXTSTEP_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home}/mlflow.db")
    frame, catalog = wide_log()
    frame["empty"] = None
    write_events(frame, tmp_path / "events.csv")
    _write_catalog(catalog, tmp_path / "catalog.yaml")
    res = CliRunner().invoke(
        app,
        [
            *("train", "--events", str(tmp_path / "events.csv")),
            *("--catalog", str(tmp_path / "catalog.yaml"), "--seed", "1"),
        ],
    )
    assert res.exit_code == 0, res.output
    out = res.output
    # the layout comes from the training rows (before the cut): most of the 500 cities
    wide = re.search(r"context city: categorical, (\d+) values: the 63 most frequent kept", out)
    assert wide is not None and int(wide.group(1)) > 400, out
    assert "context age: numeric" in out
    assert "context empty: left out: no value in the training log" in out
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{home}/mlflow.db")
    run_id = client.get_model_version("nextstep", "1").run_id
    local = client.download_artifacts(run_id, "context_columns.json", str(tmp_path / "dl"))
    logged = json.loads(Path(local).read_text(encoding="utf-8"))
    assert logged["age"] == "numeric" and logged["city"].endswith("pooled as 'other'")
    assert "ctx_city" in client.get_run(run_id).data.params["features"]
