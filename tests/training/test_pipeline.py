"""``nextstep train`` / ``promote`` against a real MLflow (SQLite file in a temporary home).

One module-wide registry: version 1 is trained on a simulated log and becomes champion; version
2 is trained on the same log with the outcomes of the *training* offers (before the calendar
cut) shuffled (the held-out offers are untouched) and must be refused by the gate. Everything
is read back with ``MlflowClient``, as a data scientist would see it in the UI. The fast tests
at the end check the pieces (split, metrics, fingerprint) without MLflow.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from evaluation import evaluate as ev
from features.catalog import load_catalog
from features.errors import NextstepError
from features.events import load_events, validate_frame, write_events
from nextstep.cli.app import app
from nextstep.cli.commands import train_command
from simulation.simulate import generate_log, write_simulation
from simulation.worlds import load_world
from training.holdout import Holdout
from training.pipeline import (
    TRUTH_COLUMN,
    fingerprint,
    fit_and_evaluate,
    gate,
    holdout_mask,
    typical_gap_hours,
)

pytestmark = pytest.mark.xdist_group("mlflow-train")  # one registry, one worker

USERS = 1500


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("nextstep-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("NEXTSTEP_HOME", str(home))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home}/mlflow.db")
    yield home
    mp.undo()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A simulated log, and a copy whose training offers' outcomes are shuffled."""
    folder = tmp_path_factory.mktemp("data")
    write_simulation(load_world("ladder"), USERS, 1, folder)
    catalog = load_catalog(folder / "catalog.yaml")
    frame = load_events(folder / "events.csv", catalog).frame
    train = ~Holdout().mask(frame)
    goals = frame["step"].isin([catalog.ids[g] for g in catalog.goal_indices]).to_numpy()
    bad = frame.drop(columns=["row"]).copy()
    rng = np.random.default_rng(0)
    shuffle = train & ~goals
    bad.loc[shuffle, "outcome"] = rng.permutation(bad.loc[shuffle, "outcome"].to_numpy())
    bad.loc[train & goals, "outcome"] = "declined"  # no conversion: every row stays valid
    write_events(bad, folder / "bad.csv")
    return {
        "events": folder / "events.csv",
        "bad": folder / "bad.csv",
        "catalog": folder / "catalog.yaml",
    }


@pytest.fixture(scope="module")
def trained(home, data):
    first = train_command(events=data["events"], catalog=data["catalog"], promote=True, seed=0)
    second = train_command(events=data["bad"], catalog=data["catalog"], promote=True, seed=0)
    return first, second


@pytest.fixture(scope="module")
def client(home, trained):
    from mlflow import MlflowClient

    uri = f"sqlite:///{home}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _alias(client, alias: str) -> str:
    return str(client.get_model_version_by_alias("nextstep", alias).version)


# -- MLflow: run, registry, gate -------------------------------------------------------------------
@pytest.mark.slow
def test_train_logs_a_run_and_registers_the_champion(home, data, trained, client):
    first, _ = trained
    assert (first.version, first.decision) == ("1", "promoted")
    run = client.get_run(first.run_id)
    m, p, tags = run.data.metrics, run.data.params, run.data.tags
    for model in ("lgbm", "logreg"):
        for k in ("auc", "logloss", "brier", "ece"):
            assert math.isfinite(m[f"{model}_{k}"]), f"{model}_{k}"
        assert any(k.startswith(f"{model}_auc_stage_") for k in m)
    assert 0.6 < m["lgbm_auc"] < 1 and m["lgbm_ece"] < 0.1
    assert m["train_rows"] + m["holdout_rows"] == float(p["rows"])
    assert len(p["data_sha256"]) == 64 and int(p["data_users"]) == USERS
    assert p["data_ts_min"] < p["data_ts_max"] and p["holdout_strategy"] == "time"
    # the calendar cut is recorded, and no training offer is at or after it
    cut = pd.Timestamp(p["holdout_from"]).timestamp()
    frame = load_events(data["events"], load_catalog(data["catalog"])).frame
    ts = frame["ts"].to_numpy()
    assert m["holdout_rows"] == float((ts >= cut).sum()) and m["train_rows"] == float(
        (ts < cut).sum()
    )
    assert tags["nextstep.holdout"] == f"offers at or after {p['holdout_from']} (calendar cut)"
    assert float(p["holdout_fraction"]) == 0.2
    assert "model_num_leaves" in p and p["seed"] == "0"
    assert int(p["value_backups"]) >= 2  # a value model was fitted, backed up past one offer
    assert tags["nextstep.promotion"] == "promoted"
    assert "first version" in tags["nextstep.promotion_reason"]
    plots = {a.path for a in client.list_artifacts(first.run_id, "plots")}
    assert plots == {
        "plots/calibration.png",
        "plots/feature_importance.png",
        "plots/auc_by_stage.png",
    }
    local = client.download_artifacts(first.run_id, "plots/calibration.png", str(home / "dl"))
    assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    files = {a.path for a in client.list_artifacts(first.run_id, "data")}
    assert {"data/holdout.parquet", "data/catalog.yaml", "data/holdout.json"} <= files
    split = client.download_artifacts(first.run_id, "data/holdout.json", str(home / "dl"))
    assert json.loads(Path(split).read_text())["from_ts"] == cut
    # artifacts live under NEXTSTEP_HOME, not in the working directory
    assert run.info.artifact_uri.startswith((home / "mlartifacts").as_uri())

    mv = client.get_model_version_by_alias("nextstep", "champion")
    assert str(mv.version) == "1" and mv.run_id == first.run_id
    assert mv.tags["promotion"] == "promoted"
    import mlflow

    info = mlflow.models.get_model_info("models:/nextstep/1")
    assert info.signature is not None
    outputs = [c.name for c in info.signature.outputs.inputs]
    assert outputs == ["user_id", "ts", "step", "p_accept"]  # readiness per offer of a raw log
    reqs = Path(
        mlflow.artifacts.download_artifacts(
            "models:/nextstep/1/requirements.txt",
            dst_path=str(home / "dl"),
            tracking_uri=f"sqlite:///{home}/mlflow.db",
        )
    ).read_text()
    assert "lightgbm==" in reqs and "scikit-learn==" in reqs and "pandas==" in reqs


@pytest.mark.slow
def test_a_worse_candidate_is_refused(trained, client):
    _, second = trained
    assert second.version == "2"
    assert second.decision == "refused" and not second.promoted
    assert second.metrics["lgbm"]["logloss"] > second.champion_logloss
    assert _alias(client, "champion") == "1"
    assert _alias(client, "challenger") == "2"
    run = client.get_run(second.run_id)
    assert run.data.tags["nextstep.promotion"] == "refused"
    reason = run.data.tags["nextstep.promotion_reason"]
    assert "champion v1" in reason and ">" in reason
    assert run.data.metrics["champion_logloss_on_holdout"] == pytest.approx(second.champion_logloss)
    assert client.get_model_version("nextstep", "2").tags["promotion"] == "refused"


@pytest.mark.slow
def test_the_pyfunc_model_predicts_on_raw_events_like_nextstep_predict(home, trained, data):
    """``mlflow.pyfunc.load_model(...).predict(events_df)``: raw event-log columns in (as read
    from the CSV, ts as text), readiness per offer out, equal to ``nextstep predict``."""
    from models.bundle import ModelScorer
    from training import tracking
    from training.modelio import load_model_bundle
    from training.predict import predict_frame

    mlflow = tracking.setup()
    model = mlflow.pyfunc.load_model("models:/nextstep@champion")
    inputs = model.metadata.get_input_schema()
    assert inputs.required_input_names() == ["user_id", "ts", "step", "outcome"]
    assert {"propensity", "policy", "decision_id"} <= set(inputs.optional_input_names())
    example = model.input_example
    assert list(example.columns[:4]) == ["user_id", "ts", "step", "outcome"]
    assert example["ts"].str.endswith("Z").all()
    assert list(model.predict(example).columns) == ["user_id", "ts", "step", "p_accept"]

    raw = pd.read_csv(data["events"], dtype=str).head(400)  # strings, as a user would read it
    got = model.predict(raw)
    catalog = load_catalog(data["catalog"])
    bundle, version = load_model_bundle("models:/nextstep@champion")
    assert version == "1"
    want = predict_frame(
        validate_frame(raw, catalog, source="x").frame, catalog, ModelScorer(bundle)
    )
    assert len(got) == len(raw)
    assert got["user_id"].tolist() == want["user_id"].tolist()
    assert got["step"].tolist() == want["step"].tolist()
    np.testing.assert_allclose(got["p_accept"].to_numpy(), want["p_accept"].to_numpy())
    assert 0 < got["p_accept"].min() <= got["p_accept"].max() < 1

    with pytest.raises(Exception, match="step"):  # an unknown step names the row and column
        model.predict(raw.assign(step="nope").head(3))


@pytest.mark.slow
def test_load_scorer_resolves_aliases_versions_and_directories(home, trained, data):
    from models.resolver import MODEL_MARKER as MARKER
    from training.modelio import ModelNotFoundError, load_scorer

    catalog = load_catalog(data["catalog"])
    _, v = load_scorer("models:/nextstep@champion", catalog)
    assert v == "1" and (home / "model-cache" / "1" / MARKER).exists()
    assert load_scorer("models:/nextstep/2", catalog)[1] == "2"
    assert load_scorer("challenger", catalog)[1] == "2"
    assert load_scorer("1", catalog)[1] == "1"
    assert load_scorer(str(home / "model-cache" / "1"), catalog)[1] == "1"
    with pytest.raises(ModelNotFoundError, match="no model registered as models:/nextstep@nope"):
        load_scorer("models:/nextstep@nope", catalog)
    with pytest.raises(ModelNotFoundError, match="no version 99"):
        load_scorer("models:/nextstep/99", catalog)


@pytest.mark.slow
def test_promote_command_gates_on_holdout_log_loss(home, trained, client):
    from training import tracking

    runner = CliRunner()
    res = runner.invoke(app, ["promote", "--version", "2"])
    assert res.exit_code == 1, res.output
    assert "refused" in res.output and "champion v1" in res.output
    assert _alias(client, "champion") == "1"
    res = runner.invoke(app, ["promote", "--version", "2", "--evidence", "ope"])
    assert res.exit_code == 2 and "a catalog is needed" in res.output
    res = runner.invoke(app, ["promote", "--version", "7"])
    assert res.exit_code == 2 and "no version '7'" in res.output
    try:
        res = runner.invoke(app, ["promote", "--version", "2", "--margin", "5"])
        assert res.exit_code == 0, res.output
        assert _alias(client, "champion") == "2"
        assert tracking.alias_version(tracking.CHALLENGER) is None  # it moved up
        res = runner.invoke(app, ["promote", "--version", "2"])
        assert res.exit_code == 0 and "already the champion" in res.output
    finally:  # leave the registry as the other tests expect it
        tracking.set_alias(tracking.CHAMPION, "1")
        tracking.set_alias(tracking.CHALLENGER, "2")


@pytest.mark.slow
def test_demo_trains_once_then_reuses_everything(tmp_path, monkeypatch):
    """``nextstep demo``: simulate + train + promote on the first run, nothing on the second."""
    from nextstep.cli import demo

    home = tmp_path / "demo-home"
    monkeypatch.setenv("NEXTSTEP_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    served: list[dict] = []
    monkeypatch.setattr(demo, "serve_command", lambda **kw: served.append(kw))

    demo.demo_command(world="eager", users=400, host="127.0.0.1", port=8123)
    assert (home / "demo" / "events.csv").exists() and (home / "mlflow.db").exists()
    assert served[-1] == {
        "catalog": home / "demo" / "catalog.yaml",
        "host": "127.0.0.1",
        "port": 8123,
        "workers": 1,
    }
    stamp = (home / "demo" / "events.csv").stat().st_mtime_ns

    import nextstep.cli.commands

    def no_training(**kw):
        raise AssertionError("the second demo run must not train")

    monkeypatch.setattr(nextstep.cli.commands, "train_command", no_training)
    demo.demo_command(world="eager", users=400, host="127.0.0.1", port=8123)
    assert len(served) == 2
    assert (home / "demo" / "events.csv").stat().st_mtime_ns == stamp


def test_train_rejects_missing_inputs_with_dask_and_bad_tolerance(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTSTEP_HOME", str(tmp_path))
    runner = CliRunner()
    args = ["train", "--events", "e.csv", "--catalog", "c.yaml"]
    res = runner.invoke(app, [*args, "--dask", "local"])  # fails before starting a cluster
    assert res.exit_code == 2 and "c.yaml" in res.output
    with pytest.raises(NextstepError, match="tolerance"):
        train_command(events=Path("e.csv"), catalog=Path("c.yaml"), tolerance=-1.0)


# -- the pieces, without MLflow -------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim():
    world = load_world("eager")
    frame = pd.DataFrame(generate_log(world, 800, 4, with_truth=True))
    return world, validate_frame(frame, world.catalog, source="sim")


def test_holdout_is_the_latest_arriving_whole_users(sim):
    _, log = sim
    f = log.frame
    ho = holdout_mask(f, 0.2)
    assert 0.2 <= ho.mean() < 0.22
    users_ho = set(f.loc[ho, "user_id"])
    assert users_ho.isdisjoint(set(f.loc[~ho, "user_id"]))  # nobody straddles
    first = f.groupby("user_id")["ts"].min()
    assert first[list(users_ho)].min() >= first.drop(list(users_ho)).max()


def test_truth_is_a_reference_never_a_feature(sim):
    world, log = sim
    assert TRUTH_COLUMN in log.context_columns
    out = fit_and_evaluate(log, world.catalog, params={"n_estimators": 30})
    assert out.spec.context_columns == ("channel", "device")
    assert set(out.metrics) == {"lgbm", "logreg", "truth"}
    assert out.metrics["truth"]["auc"] > 0.6
    assert out.train_rows + out.holdout_rows == len(log.frame)
    assert list(out.example.columns) == out.spec.names


def test_fingerprint_is_the_same_for_csv_and_parquet(tmp_path, sim):
    world, log = sim
    frame = log.frame.drop(columns=[TRUTH_COLUMN, "user_type"])
    write_events(frame, tmp_path / "e.csv")
    write_events(frame, tmp_path / "e.parquet")
    a = fingerprint(load_events(tmp_path / "e.csv", world.catalog), world.catalog)
    b = fingerprint(load_events(tmp_path / "e.parquet", world.catalog), world.catalog)
    assert a["sha256"] == b["sha256"] and a["rows"] == len(frame)
    changed = frame.copy()
    changed.loc[5, "outcome"] = "dropped" if changed.loc[5, "outcome"] != "dropped" else "declined"
    c = fingerprint(validate_frame(changed, world.catalog, source="x"), world.catalog)
    assert c["sha256"] != a["sha256"]


def test_typical_gap_is_the_median_gap_within_users():
    f = pd.DataFrame({"user_id": ["a", "b", "a", "a", "b"], "ts": [0, 0, 3600, 3 * 3600, 7200]})
    assert typical_gap_hours(f) == 2.0  # gaps: a 1h, 2h; b 2h
    assert typical_gap_hours(f.iloc[:2]) == 24.0  # nobody came back


def test_gate_compares_log_loss_with_tolerance():
    assert gate(0.5, None, 0.0, None).promote
    assert gate(0.50, 0.50, 0.0, "1").promote
    assert not gate(0.51, 0.50, 0.0, "1").promote
    assert gate(0.51, 0.50, 0.02, "1").promote


def test_metrics_match_their_definitions():
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    rng = np.random.default_rng(1)
    p = rng.uniform(0.01, 0.99, 500)
    y = (rng.uniform(size=500) < p).astype(int)
    m = ev.binary_metrics(y, p)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["logloss"] == pytest.approx(log_loss(y, p))
    assert m["brier"] == pytest.approx(brier_score_loss(y, p))
    # ECE by hand: bins [0,.1) and [.9,1]: |0.05-0| * 2/4 + |0.95-0.5| * 2/4
    assert ev.expected_calibration_error([0, 0, 1, 0], [0.05, 0.05, 0.95, 0.95]) == pytest.approx(
        0.5 * 0.05 + 0.5 * 0.45
    )
    assert math.isnan(ev.auc([1, 1], [0.2, 0.3]))
    stages = ev.auc_by_stage([0, 1, 0, 1, 1], [0.1, 0.9, 0.2, 0.8, 0.5], [0, 0, 4, 4, 2])
    assert stages["start"] == 1.0 and stages["convert"] == 1.0 and math.isnan(stages["guide"])


def test_plots_are_png_files(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.uniform(size=200)
    y = (rng.uniform(size=200) < p).astype(int)
    paths = [
        ev.plot_calibration({"a": (y, p)}, tmp_path / "cal.png"),
        ev.plot_feature_importance(["x", "y", "z"], [3.0, 1.0, 0.0], tmp_path / "imp.png"),
        ev.plot_auc_by_stage({"a": {"start": 0.7, "convert": 0.8}}, tmp_path / "st.png"),
    ]
    for path in paths:
        assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_train_values_candidate_policies_and_tags_the_recommendation(home, trained, client):
    from evaluation.policy_choice import CANDIDATES

    first, _ = trained
    run = client.get_run(first.run_id)
    arts = {a.path for a in client.list_artifacts(first.run_id, "policies")}
    assert arts == {"policies/policy_ope.csv", "policies/policy_ope.png"}
    local = client.download_artifacts(first.run_id, "policies/policy_ope.csv", str(home / "dl"))
    table = pd.read_csv(local)
    assert table["policy"].tolist() == list(CANDIDATES)
    for name in CANDIDATES:
        assert run.data.metrics[f"ope_{name}"] == pytest.approx(
            float(table.loc[table["policy"] == name, "value"].iloc[0])
        )
    assert (table["low"] <= table["value"] + 1e-12).all()
    assert (table["value"] <= table["high"] + 1e-12).all()
    # the recommendation follows the rule on the logged table: the planner, unless a challenger's
    # lower bound clears the planner's upper bound (then the best such lower bound, then simplest)
    trusted = ~table["low_overlap"]
    assert (table.loc[trusted, "selection_low"] == table.loc[trusted, "low"]).all()
    assert (table.loc[trusted, "selection_high"] == table.loc[trusted, "high"]).all()
    assert (table.loc[~trusted, "selection_low"] <= table.loc[~trusted, "value"]).all()
    assert (table.loc[~trusted, "selection_high"] >= table.loc[~trusted, "value"]).all()
    bar = float(table.loc[table["policy"] == "planner", "selection_high"].iloc[0])
    challengers = table[(table["policy"] != "planner") & (table["selection_low"] > bar + 1e-9)]
    expected = "planner"
    if len(challengers):
        lows = challengers["selection_low"]
        best = challengers[lows >= lows.max() - 1e-9]["policy"]
        expected = min(best, key=list(CANDIDATES).index)
    assert first.recommended_policy == expected
    assert table.loc[table["recommended"], "policy"].tolist() == [expected]
    tags = client.get_model_version("nextstep", first.version).tags
    assert tags["recommended_policy"] == expected
    assert tags["recommended_policy_trusted"] == str(first.recommended_trusted).lower()
    assert run.data.tags["nextstep.recommended_policy"] == expected


def test_policy_gate_refuses_a_clearly_worse_recommended_policy():
    from evaluation.offpolicy import Estimate, Trajectory
    from evaluation.policy_choice import recommend
    from training.policy_eval import PolicyEvaluation, policy_gate

    def result(value: float, half: float) -> Trajectory:
        est = Estimate("wdr", value, value - half, value + half, 500.0, low_overlap=False)
        return Trajectory(est, {}, 500.0, 1000, 0.0, 1.0, math.inf)

    cand = {"ladder": result(0.20, 0.02)}
    evaluation = PolicyEvaluation(cand, recommend(cand), 1000)
    ok, reason = policy_gate(evaluation, result(0.30, 0.02), "1")
    assert not ok and "ladder" in reason and "champion v1" in reason and "<" in reason
    ok, _ = policy_gate(evaluation, result(0.21, 0.02), "1")  # within the noise: no worse
    assert ok
    ok, reason = policy_gate(evaluation, None, None)
    assert ok and "no champion" in reason
