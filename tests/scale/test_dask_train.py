"""``--dask``: training, scoring and deciding on a Dask cluster give the single-machine results.

One simulated log is written twice: as one Parquet file (the single-machine run) and as a
directory of Parquet files holding the same rows in the same order (the Dask run). Both runs log
to the same MLflow registry; they must see the same rows (same data SHA-256), the same holdout
and reach the same quality (holdout AUC within 0.005). ``predict``/``recommend`` with ``--dask``
must give the single-machine output row for row. The CSV tests check what only a partitioned
reader can get wrong: a number column that is text in one file, errors that name the file and
its row, an offer after a conversion recorded in another file.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.catalog import load_catalog
from features.errors import EventLogError
from features.events import load_events, write_events
from nextstep.cli.app import app
from nextstep.cli.commands import train_command
from simulation.simulate import write_simulation
from simulation.worlds import load_world
from training.pipeline import SERVED_NAMES, SERVED_TAG, features_for, fingerprint

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dask")]

METRICS_OF = {name: key for key, name in SERVED_NAMES.items()}  # "logistic" -> "logreg"

USERS = 3000
PARTS = 4


def _split(frame: pd.DataFrame, folder: Path, suffix: str, parts: int = PARTS) -> list[Path]:
    """Contiguous chunks of ``frame`` as ``part-000.<suffix>`` ... (same rows, same order)."""
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(frame), parts + 1).astype(int)
    paths = []
    for i in range(parts):
        path = folder / f"part-{i:03d}.{suffix}"
        write_events(frame.iloc[bounds[i] : bounds[i + 1]], path)
        paths.append(path)
    return paths


def _train_args(events: Path, catalog: Path) -> list[str]:
    return ["train", "--events", str(events), "--catalog", str(catalog)]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("nextstep-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("NEXTSTEP_HOME", str(home))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home}/mlflow.db")
    yield home
    mp.undo()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("dask-data")
    write_simulation(load_world("ladder"), USERS, 3, folder)
    catalog = load_catalog(folder / "catalog.yaml")
    frame = load_events(folder / "events.csv", catalog).frame
    write_events(frame, folder / "all.parquet")
    _split(frame, folder / "parts", "parquet")
    return {"catalog": folder / "catalog.yaml", "single": folder / "all.parquet", "parts": folder}


@pytest.fixture(scope="module")
def cluster():
    """One LocalCluster for the lower-level tests, reached by address (the ADDRESS form)."""
    import warnings

    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "port 8787 in use" when another cluster runs
        c = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    with c, Client(c) as client:
        yield c.scheduler_address, client


@pytest.fixture(scope="module")
def trained(home, data):
    """Version 1 on one machine, version 2 with ``nextstep train --dask local``."""
    local = train_command(events=data["single"], catalog=data["catalog"], promote=True)
    res = CliRunner().invoke(
        app,
        [*_train_args(data["parts"] / "parts", data["catalog"]), "--dask", "local"],
    )
    assert res.exit_code == 0, res.output
    return local, res.output


def test_dask_training_matches_the_single_machine_run(home, data, trained):
    from mlflow import MlflowClient

    local, output = trained
    assert "version 2" in output
    client = MlflowClient(f"sqlite:///{home}/mlflow.db")
    one = client.get_run(local.run_id)
    v2 = client.get_model_version("nextstep", "2")
    two = client.get_run(v2.run_id)
    p1, p2 = one.data.params, two.data.params
    assert (p1["engine"], p2["engine"]) == ("local", "dask")
    assert int(p1["value_backups"]) >= 2 and p2["value_backups"] == "0"  # Dask fits no value model
    # the same rows in the same order, the same users in the holdout
    assert p1["data_sha256"] == p2["data_sha256"]
    for k in ("rows", "train_rows", "holdout_rows", "data_users", "features", "context_columns"):
        assert p1[k] == p2[k], k
    for k in ("model_num_leaves", "model_n_estimators", "model_learning_rate"):
        assert p1[k] == p2[k], k
    m1, m2 = one.data.metrics, two.data.metrics
    assert math.isclose(m1["typical_gap_hours"], m2["typical_gap_hours"], rel_tol=1e-9)
    assert abs(m1["lgbm_auc"] - m2["lgbm_auc"]) <= 0.005, (m1["lgbm_auc"], m2["lgbm_auc"])
    assert abs(m1["lgbm_logloss"] - m2["lgbm_logloss"]) <= 0.02
    assert m2["lgbm_ece"] < 0.1
    assert abs(m1["logreg_auc"] - m2["logreg_auc"]) <= 1e-3  # same rows: the same baseline
    # logged exactly like a single-machine run: plots, holdout data, registered pyfunc
    assert {a.path for a in client.list_artifacts(two.info.run_id, "plots")} == {
        a.path for a in client.list_artifacts(one.info.run_id, "plots")
    }
    dl = home / "dl"
    h1 = client.download_artifacts(one.info.run_id, "data/holdout.parquet", str(dl / "1"))
    h2 = client.download_artifacts(two.info.run_id, "data/holdout.parquet", str(dl / "2"))
    pd.testing.assert_frame_equal(pd.read_parquet(h1), pd.read_parquet(h2))
    assert two.data.tags["nextstep.promotion"] == "not_requested"
    served = METRICS_OF[v2.tags["readiness_model"]]
    assert v2.tags["holdout_auc"] == f"{m2[f'{served}_auc']:.6f}"  # the served model's

    from training.modelio import load_model_bundle

    bundle, version = load_model_bundle("models:/nextstep/2")
    assert version == "2" and bundle.drop is not None and bundle.back is not None
    cat = load_catalog(data["catalog"])
    log = load_events(data["single"], cat)
    p = bundle.readiness.predict_proba(features_for(log.frame, cat, bundle.spec).X[:50])
    assert p.shape == (50, 2) and np.all((p > 0) & (p < 1))
    # the drift watch's reference (features.drift) is stored by both engines, alike
    one_bundle, _ = load_model_bundle("models:/nextstep/1")
    ref1, ref2 = (b.meta["context_reference"]["columns"] for b in (one_bundle, bundle))
    assert set(ref1) == set(ref2) == set(bundle.spec.context_columns) != set()
    for col, r1 in ref1.items():
        r2 = ref2[col]
        assert r1["kind"] == r2["kind"] and len(r1["shares"]) == len(r2["shares"]), col
        assert max(abs(a - b) for a, b in zip(r1["shares"], r2["shares"], strict=True)) < 0.02


def test_dask_run_is_reproducible_and_gated(home, data, trained, cluster):
    """Same data, same seed: the same model, wherever the partitions land; --promote gates
    against the champion scored on the workers."""
    address, _ = cluster
    r3 = train_command(
        events=data["parts"] / "parts", catalog=data["catalog"], dask=address, promote=True
    )
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{home}/mlflow.db")
    m2 = client.get_run(client.get_model_version("nextstep", "2").run_id).data.metrics
    assert r3.version == "3"
    assert r3.metrics["lgbm"]["auc"] == pytest.approx(m2["lgbm_auc"], abs=1e-12)
    assert r3.metrics["lgbm"]["logloss"] == pytest.approx(m2["lgbm_logloss"], abs=1e-12)
    assert r3.decision in ("promoted", "refused") and "champion v1" in r3.reason
    assert r3.champion_logloss is not None
    # the champion (v1, single machine) scored on the workers = scored on one machine, by the
    # readiness model v1 serves (whichever its tag names)
    v1 = client.get_run(client.get_model_version("nextstep", "1").run_id)
    served = METRICS_OF[v1.data.tags[SERVED_TAG]]
    assert r3.champion_logloss == pytest.approx(v1.data.metrics[f"{served}_logloss"], rel=1e-9)


def test_predict_and_recommend_with_dask_match_one_machine(home, data, trained, cluster, tmp_path):
    from nextstep.cli.commands import predict_command, recommend_command

    address, _ = cluster
    kw = {"catalog": data["catalog"], "model": "models:/nextstep/1"}
    one = predict_command(events=data["single"], out=tmp_path / "p1.parquet", **kw)
    two = predict_command(
        events=data["parts"] / "parts", out=tmp_path / "p2.parquet", dask=address, **kw
    )
    pd.testing.assert_frame_equal(one, two, check_dtype=False)
    one = recommend_command(events=data["single"], out=tmp_path / "r1.csv", **kw)
    two = recommend_command(
        events=str(data["parts"] / "parts" / "*.parquet"),
        out=tmp_path / "r2.csv",
        dask=address,
        **kw,
    )
    pd.testing.assert_frame_equal(one, two, check_dtype=False)
    assert one["step"].notna().any()


# -- partitioned CSV ------------------------------------------------------------------------------
CATALOG = {
    "steps": [
        {"id": "read_intro", "stage": "start", "effort": 1},
        {"id": "create_account", "stage": "build", "effort": 5, "requires": ["read_intro"]},
        {"id": "purchase", "stage": "convert", "effort": 8, "requires": ["create_account"]},
    ]
}


def _csv_world(folder: Path) -> tuple[Path, pd.DataFrame]:
    import yaml

    (folder / "catalog.yaml").write_text(yaml.safe_dump(CATALOG), encoding="utf-8")
    rng = np.random.default_rng(0)
    rows = []
    for u in range(60):
        for k, step in enumerate(("read_intro", "create_account", "purchase")):
            rows.append(
                {
                    "user_id": f"{u:04d}",  # leading zeros: ids are text
                    "ts": f"2025-03-0{1 + k}T10:{u % 60:02d}:00Z",
                    "step": step,
                    "outcome": "accepted" if rng.random() < 0.7 else "declined",
                    "channel": ["email", "ads"][u % 2],
                    "score": str(u % 7),
                }
            )
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=1).reset_index(drop=True)
    frame.loc[5, "score"] = None  # a gap: the column is float64 over the whole log
    return folder / "catalog.yaml", frame


def _write_csv_parts(frame: pd.DataFrame, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(frame), 4).astype(int)
    for i in range(3):
        frame.iloc[bounds[i] : bounds[i + 1]].to_csv(folder / f"part-{i}.csv", index=False)


def test_csv_parts_read_like_one_file(tmp_path, cluster):
    from training.dask_train import fingerprint_dask, load_events_dask

    _, client = cluster
    catalog_path, frame = _csv_world(tmp_path)
    frame.to_csv(tmp_path / "all.csv", index=False)
    _write_csv_parts(frame, tmp_path / "parts")
    cat = load_catalog(catalog_path)
    local = load_events(tmp_path / "all.csv", cat)
    dlog = load_events_dask(client, tmp_path / "parts", cat)
    with dask.config.set({"dataframe.convert-string": False}):  # as the engine computes
        got = dlog.frames.compute().sort_values("row").reset_index(drop=True)
    want = local.frame
    assert list(got.columns) == list(want.columns)
    assert got["score"].dtype == want["score"].dtype == np.float64
    pd.testing.assert_frame_equal(
        got.drop(columns="row"), want.drop(columns="row"), check_dtype=True
    )
    assert fingerprint_dask(dlog, cat)["sha256"] == fingerprint(local, cat)["sha256"]


def test_csv_errors_name_the_file_and_row(tmp_path, cluster):
    from training.dask_train import load_events_dask

    _, client = cluster
    catalog_path, frame = _csv_world(tmp_path)
    cat = load_catalog(catalog_path)
    frame["outcome"] = np.where(frame["step"] == "purchase", "declined", "accepted")
    # user 0007 converts first thing (first file) and is offered a step again in the last file
    early = frame["user_id"] == "0007"
    frame.loc[early, "ts"] = (
        frame.loc[early, "step"]
        .map({"read_intro": "2025-02-01T00:00:01Z", "create_account": "2025-02-01T00:00:02Z"})
        .fillna("2025-02-01T00:00:03Z")
    )
    frame.loc[early & (frame["step"] == "purchase"), "outcome"] = "accepted"
    frame = frame.sort_values(["ts", "user_id"]).reset_index(drop=True)
    late = frame.loc[frame["user_id"] == "0007"].iloc[0].to_dict()
    late.update(ts="2025-03-09T00:00:00Z", step="read_intro", outcome="declined")
    converted = pd.concat([frame, pd.DataFrame([late])], ignore_index=True)
    _write_csv_parts(converted, tmp_path / "late")
    last = pd.read_csv(tmp_path / "late" / "part-2.csv", dtype=str)
    row = int(np.flatnonzero(last["ts"] == "2025-03-09T00:00:00Z")[0]) + 1
    with pytest.raises(EventLogError) as err:
        load_events_dask(client, tmp_path / "late", cat)
    msg = str(err.value)
    assert "part-2.csv" in msg and f"row {row}," in msg and "already converted" in msg, msg
    assert "of " + str(tmp_path / "late" / "part-0.csv") in msg, msg  # where it converted

    # an unknown step in the middle file: that file, that row
    bad = frame.copy()
    bounds = np.linspace(0, len(bad), 4).astype(int)
    bad.loc[bounds[1] + 3, "step"] = "jump"
    _write_csv_parts(bad, tmp_path / "bad")
    with pytest.raises(EventLogError, match=r"part-1\.csv, row 4, column 'step'.*'jump'"):
        load_events_dask(client, tmp_path / "bad", cat)

    # both, skipped and counted
    both = converted.copy()
    both.loc[bounds[1] + 3, "step"] = "jump"
    _write_csv_parts(both, tmp_path / "both")
    dlog = load_events_dask(client, tmp_path / "both", cat, skip_invalid=True)
    assert dlog.skipped == {"unknown_step": 1, "after_conversion": 1}
    assert dlog.n_rows == len(both) - 2


def test_dask_option_errors_are_clear(tmp_path, data, home):
    runner = CliRunner()
    res = runner.invoke(
        app,
        [*_train_args(tmp_path / "nothing", data["catalog"]), "--dask", "local"],
    )
    assert res.exit_code == 2 and "file not found" in res.output
    (tmp_path / "empty").mkdir()
    res = runner.invoke(
        app,
        [*_train_args(tmp_path / "empty", data["catalog"]), "--dask", "tcp://127.0.0.1:9"],
    )
    assert res.exit_code == 2 and "no event files found" in res.output
