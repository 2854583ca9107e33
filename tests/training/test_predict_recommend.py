"""``nextstep predict`` and ``nextstep recommend`` on simulated logs, with a real model bundle.

The model is a real LightGBM bundle fitted on a simulated log and saved to a local directory
(``--model DIR``), so these tests need no MLflow; the registry path of ``load_scorer`` is tested
in ``test_pipeline.py``. The leakage test edits every row after a chosen offer (outcome, step,
context, extra rows appended) and requires that offer's prediction to stay bit-identical.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from features.events import EventLog, validate_frame, write_events
from features.state import fold_history
from models.decide import Decider
from models.policies import PolicyConfig
from models.serving import save_bundle
from nextstep.cli.app import app
from simulation.simulate import generate_log
from simulation.synthetic import bundle_from_frame
from simulation.worlds import load_world
from training.modelio import ModelNotFoundError, load_scorer
from training.predict import predict_frame
from training.recommend import final_states, recommend_frame

USERS = 600


@pytest.fixture(scope="module")
def world():
    return load_world("two_goals")  # prerequisites and two goals: the hardest eligibility rules


@pytest.fixture(scope="module")
def log(world) -> EventLog:
    frame = pd.DataFrame(generate_log(world, USERS, seed=5))
    return validate_frame(frame, world.catalog, source="sim")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, world, log) -> Path:
    """A small real bundle (fewer trees than production, same code path) saved to disk."""
    bundle = bundle_from_frame(
        log.frame, world.catalog, log.context_columns, params={"n_estimators": 40}
    )
    return save_bundle(bundle, tmp_path_factory.mktemp("model") / "bundle")


@pytest.fixture(scope="module")
def scorer(model_dir, world):
    scorer, _version = load_scorer(str(model_dir), world.catalog)
    return scorer


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty NEXTSTEP_HOME: no tracking database, so no registered model."""
    monkeypatch.setenv("NEXTSTEP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "home"


def _write_catalog(world, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"steps": world.catalog.to_list()}), encoding="utf-8")
    return path


# -- predict --------------------------------------------------------------------------------------
def test_predict_keeps_input_order_and_columns(tmp_path, home, world, log, model_dir):
    shuffled = log.frame.sample(frac=1.0, random_state=3).drop(columns=["row"])
    events = tmp_path / "events.csv"
    write_events(shuffled, events)
    catalog = _write_catalog(world, tmp_path / "catalog.yaml")
    for out in (tmp_path / "pred.csv", tmp_path / "pred.parquet"):
        res = CliRunner().invoke(
            app,
            [
                "predict",
                "--events",
                str(events),
                "--catalog",
                str(catalog),
                "--out",
                str(out),
                "--model",
                str(model_dir),
            ],
        )
        assert res.exit_code == 0, res.output
        got = pd.read_csv(out) if out.suffix == ".csv" else pq.read_table(out).to_pandas()
        assert list(got.columns) == ["user_id", "ts", "step", "p_accept"]
        assert got["user_id"].tolist() == shuffled["user_id"].tolist()
        assert got["step"].tolist() == shuffled["step"].tolist()
        assert got["p_accept"].between(0, 1).all()
        if out.suffix == ".csv":
            assert got["ts"].str.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$").all()
            epoch = pd.Timestamp(0, tz="UTC")
            back = (pd.to_datetime(got["ts"], utc=True) - epoch) / pd.Timedelta(seconds=1)
            np.testing.assert_allclose(back, shuffled["ts"].to_numpy())
        else:
            np.testing.assert_array_equal(got["ts"].to_numpy(), shuffled["ts"].to_numpy())
    # the same rows in another order get the same predictions (nothing depends on file order)
    a = pd.read_csv(tmp_path / "pred.csv")
    b = predict_frame(log.frame, world.catalog, load_scorer(str(model_dir), world.catalog)[0])
    merged = a.merge(
        b.assign(ts=pd.to_datetime(b["ts"], unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")),
        on=["user_id", "ts", "step"],
        suffixes=("_shuffled", "_sorted"),
    )
    assert len(merged) == len(a)
    np.testing.assert_allclose(merged["p_accept_shuffled"], merged["p_accept_sorted"])


def _later_rows_changed(frame: pd.DataFrame, world, rng: np.random.Generator, how: str):
    """A copy where, for every user with 3+ offers, every offer after the user's 2nd one is
    changed (``how``); returns the copy and a mask of the untouched "earlier" rows."""
    f = frame.reset_index(drop=True).copy()
    order = np.lexsort((f["row"].to_numpy(), f["ts"].to_numpy(), f["user_id"].to_numpy()))
    pos = np.empty(len(f), dtype=np.int64)
    pos[order] = f.iloc[order].groupby("user_id", sort=False).cumcount().to_numpy()
    n = f.groupby("user_id")["user_id"].transform("size").to_numpy()
    later = (pos >= 2) & (n >= 3)
    cat = world.catalog
    non_goals = [cat.ids[i] for i in range(cat.n) if not (cat.goal_mask >> i) & 1]
    if how == "outcome":  # a different non-accept outcome (cannot create a conversion)
        f.loc[later, "outcome"] = rng.choice(["declined", "dropped"], size=later.sum())
    elif how == "step":  # another non-goal step, declined
        f.loc[later, "step"] = rng.choice(non_goals, size=later.sum())
        f.loc[later, "outcome"] = "declined"
    elif how == "context":
        f.loc[later, "channel"] = rng.choice(["email", "zzz-new"], size=later.sum())
        f.loc[later, "device"] = None
    elif how == "append":  # extra offers after each unconverted user's last event
        users = f.loc[later, "user_id"].unique()
        last = f.groupby("user_id")["ts"].max()
        conv = f[
            f["step"].isin([cat.ids[g] for g in cat.goal_indices]) & (f["outcome"] == "accepted")
        ]["user_id"].unique()
        extra = pd.DataFrame(
            {
                "user_id": [u for u in users if u not in set(conv)],
            }
        )
        extra["ts"] = extra["user_id"].map(last) + 3600.0
        extra["step"] = rng.choice(non_goals, size=len(extra))
        extra["outcome"] = "accepted"
        extra["channel"], extra["device"] = "social", "mobile"
        f = pd.concat([f.drop(columns=["row"]), extra], ignore_index=True)
        return f, np.r_[~later, np.zeros(len(extra), dtype=bool)], later
    return f.drop(columns=["row"]), ~later, later


@pytest.mark.parametrize("how", ["outcome", "step", "context", "append"])
def test_no_leakage_from_later_rows(world, log, scorer, how):
    base = predict_frame(log.frame, world.catalog, scorer)["p_accept"].to_numpy()
    rng = np.random.default_rng(0)
    changed, keep, later = _later_rows_changed(log.frame, world, rng, how)
    new_log = validate_frame(changed, world.catalog, source=f"changed-{how}")
    new = predict_frame(new_log.frame, world.catalog, scorer)["p_accept"].to_numpy()
    assert later.sum() > 100  # the edit touched many rows
    # every offer up to the user's 2nd one is bit-identical
    np.testing.assert_array_equal(new[: len(base)][keep[: len(base)]], base[~later])
    if how in ("outcome", "step"):
        assert not np.array_equal(new[: len(base)][later], base[later])  # the edit mattered


def test_predict_without_a_model_is_a_clear_error(tmp_path, home, world, log):
    events = tmp_path / "e.csv"
    write_events(log.frame, events)
    catalog = _write_catalog(world, tmp_path / "catalog.yaml")
    res = CliRunner().invoke(
        app,
        [
            "predict",
            "--events",
            str(events),
            "--catalog",
            str(catalog),
            "--out",
            str(tmp_path / "p.csv"),
        ],
    )
    assert res.exit_code == 2
    assert "no model registered as models:/nextstep@champion" in res.output
    assert not (home / "mlflow.db").exists()  # asking did not create a registry
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_scorer(str(tmp_path / "missing-dir"), world.catalog)


def test_predict_rejects_unknown_output_type(tmp_path, home, world, log, model_dir):
    events = tmp_path / "e.csv"
    write_events(log.frame, events)
    catalog = _write_catalog(world, tmp_path / "catalog.yaml")
    res = CliRunner().invoke(
        app,
        [
            "predict",
            "--events",
            str(events),
            "--catalog",
            str(catalog),
            "--out",
            str(tmp_path / "p.json"),
            "--model",
            str(model_dir),
        ],
    )
    assert res.exit_code == 2
    assert "unsupported output type" in res.output


# -- recommend -------------------------------------------------------------------------------------
def test_final_states_equal_the_online_fold(world, log):
    frame = log.frame
    fs = final_states(frame, world.catalog, log.context_columns)
    assert fs.user_ids == list(pd.unique(frame["user_id"]))
    ordered = frame.sort_values(["user_id", "ts", "row"], kind="stable")
    by_user = {
        uid: fold_history(
            world.catalog,
            zip(
                g["step"],
                g["outcome"],
                g["ts"],
                g[log.context_columns].to_dict("records"),
                strict=True,
            ),
        )
        for uid, g in ordered.groupby("user_id", sort=False)
    }
    for uid, state, last in zip(fs.user_ids, fs.states, fs.last_ts, strict=True):
        want = by_user[uid]
        assert _fields(state) == _fields(want), uid
        assert last == want.last_ts


def _fields(state) -> dict:
    """A state's fields with NaN made comparable (NaN != NaN in dataclass equality)."""
    out = {}
    for f in dataclasses.fields(state):
        v = getattr(state, f.name)
        out[f.name] = "nan" if isinstance(v, float) and math.isnan(v) else v
    return out


@pytest.mark.parametrize("policy", ["planner", "greedy", "ladder", "big_ask", "random+epsilon=0.3"])
def test_recommend_offers_only_eligible_steps(world, log, scorer, policy):
    config = PolicyConfig.parse(policy)
    decider = Decider(world.catalog, config, scorer=scorer, model_version="t", seed=1)
    out = recommend_frame(log.frame, world.catalog, decider, log.context_columns)
    assert list(out.columns) == [
        "user_id",
        "step",
        "stage",
        "p_accept",
        "propensity",
        "policy",
        "reason",
    ]
    assert out["user_id"].tolist() == list(pd.unique(log.frame["user_id"]))
    fs = final_states(log.frame, world.catalog, log.context_columns)
    cat = world.catalog
    n_converted = 0
    for row, state in zip(out.itertuples(index=False), fs.states, strict=True):
        if state.converted(cat):
            n_converted += 1
            assert row.step is None and row.reason == "converted"
            continue
        eligible = {cat.ids[i] for i in cat.eligible_indices(state.accepted_mask)}
        if not eligible:
            assert row.step is None and row.reason == "no_eligible_step"
            continue
        assert row.step in eligible, (row.user_id, row.step, eligible)
        assert row.stage == cat[row.step].stage
        assert 0 < row.propensity <= 1
        assert row.reason is None
    assert n_converted > 20  # the log has converted users, and they were all refused
    assert (out["policy"] == config.name).all()


def test_recommend_cli_ladder_needs_no_model(tmp_path, home, world, log):
    events = tmp_path / "events.parquet"
    write_events(log.frame, events)
    catalog = _write_catalog(world, tmp_path / "catalog.yaml")
    out = tmp_path / "rec.csv"
    res = CliRunner().invoke(
        app,
        [
            "recommend",
            "--events",
            str(events),
            "--catalog",
            str(catalog),
            "--out",
            str(out),
            "--policy",
            "ladder",
        ],
    )
    assert res.exit_code == 0, res.output
    got = pd.read_csv(out)
    assert len(got) == log.frame["user_id"].nunique()
    assert set(got.loc[got["step"].isna(), "reason"]) <= {"converted", "no_eligible_step"}
    # a model policy without a model says so clearly
    res = CliRunner().invoke(
        app,
        [
            "recommend",
            "--events",
            str(events),
            "--catalog",
            str(catalog),
            "--out",
            str(out),
            "--policy",
            "planner",
        ],
    )
    assert res.exit_code == 2
    assert "no model registered" in res.output
    res = CliRunner().invoke(
        app,
        [
            "recommend",
            "--events",
            str(events),
            "--catalog",
            str(catalog),
            "--out",
            str(out),
            "--policy",
            "bogus",
        ],
    )
    assert res.exit_code == 2
    assert "unknown policy" in res.output


def test_recommend_cli_with_a_model_directory(tmp_path, home, world, log, model_dir):
    events = tmp_path / "events.csv"
    write_events(log.frame, events)
    catalog = _write_catalog(world, tmp_path / "catalog.yaml")
    out = tmp_path / "rec.parquet"
    res = CliRunner().invoke(
        app,
        [
            "recommend",
            "--events",
            str(events),
            "--catalog",
            str(catalog),
            "--out",
            str(out),
            "--model",
            str(model_dir),
            "--seed",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    got = pq.read_table(out).to_pandas()
    assert got["policy"].eq("planner").all()
    offered = got["step"].notna()
    assert got.loc[offered, "p_accept"].between(0, 1).all()
    assert got.loc[~offered, "p_accept"].isna().all()
