"""``available_when`` on every offline decision path: the simulator's logging policy,
``rollout`` (in process), ``recommend`` (also with ``--candidates-column``) and ``compare``'s
replay of the log. The world is the built-in ``ladder`` with ``watch_clip`` (the second rung,
which ``ladder`` offers right after the intro) available to email users only."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from evaluation.offpolicy import build_policy, evaluate_log
from features.catalog import Catalog
from features.events import validate_frame, write_events
from features.spec import root_block
from features.state import UserState
from models.bundle import ModelScorer
from models.decide import Decider
from models.planner import Planner
from models.policies import PolicyConfig
from nextstep.cli.app import app
from simulation.rollout import InProcess, run_users
from simulation.simulate import generate_log
from simulation.synthetic import bundle_from_frame
from simulation.worlds import BUILTIN, World, world_from_dict
from training.recommend import recommend_frame

RESTRICTED = "watch_clip"


@pytest.fixture(scope="module")
def world() -> World:
    data = copy.deepcopy(BUILTIN["ladder"])
    for step in data["catalog"]:
        if step["id"] == RESTRICTED:
            step["available_when"] = {"channel": ["email"]}
    return world_from_dict(data, name="ladder-email-clip")


@pytest.fixture(scope="module")
def log(world):
    frame = pd.DataFrame(generate_log(world, 400, seed=2))
    return validate_frame(frame, world.catalog, source="sim")  # would refuse a bad offer


def test_the_simulator_offers_the_step_only_where_it_exists(log):
    f = log.frame
    offered = f.loc[f["step"] == RESTRICTED, "channel"]
    assert len(offered) > 20 and set(offered) == {"email"}
    assert (f["channel"] != "email").sum() > 100  # the others were there, and not offered it


def test_rollout_in_process_honours_and_checks_the_rules(world):
    ladder = PolicyConfig.parse("ladder")
    res = run_users(world, 200, 1, InProcess(world, Decider(world.catalog, ladder)))
    assert res.invalid == 0 and res.offers > 200
    # a decider that ignores the rules is caught by the rollout's own check
    blind = Catalog.from_data(
        [{k: v for k, v in s.to_dict().items() if k != "available_when"} for s in world.catalog]
    )
    res = run_users(world, 200, 1, InProcess(world, Decider(blind, ladder)))
    assert res.invalid > 20


def test_recommend_never_offers_an_unavailable_step(world, log):
    decider = Decider(world.catalog, PolicyConfig.parse("ladder"))
    out = recommend_frame(log.frame, world.catalog, decider, ["channel", "device"])
    channel = log.frame.groupby("user_id", sort=False)["channel"].last()
    out = out.assign(channel=channel.loc[out["user_id"]].to_numpy())
    assert set(out.loc[out["step"] == RESTRICTED, "channel"]) == {"email"}
    assert (out["step"] == RESTRICTED).sum() > 5
    assert ((out["channel"] != "email") & out["step"].notna()).sum() > 5


def test_compare_replays_each_offer_with_the_rules(world, log):
    cat = world.catalog
    policies = {"ladder": build_policy("ladder", cat, None)[1]}
    dec = evaluate_log(log.frame, cat, policies, context_columns=["channel", "device"], keep=True)
    assert dec.eligible is not None and dec.states is not None
    restricted = cat.index[RESTRICTED]
    for elig, state in zip(dec.eligible, dec.states, strict=True):
        assert elig == cat.eligible_indices(state.accepted_mask, cat.available(state.context))
        if state.context.get("channel") != "email":
            assert restricted not in elig
    assert dec.logged_eligible.all()


# -- recommend --candidates-column -------------------------------------------------------------
@pytest.fixture
def files(tmp_path, world, log) -> dict[str, Path]:
    frame = log.frame.drop(columns=["row"]).copy()
    users = frame["user_id"].drop_duplicates().tolist()
    allowed = {
        u: ("take_quiz|create_account" if k % 2 else '["purchase"]') for k, u in enumerate(users)
    }
    frame["allowed"] = frame["user_id"].map(allowed)
    frame.loc[frame.index[::3], "allowed"] = None  # the latest non-empty value counts
    write_events(frame, tmp_path / "events.csv")
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"steps": world.catalog.to_list()}), encoding="utf-8")
    return {"events": tmp_path / "events.csv", "catalog": path, "out": tmp_path / "rec.csv"}


def _recommend(files: dict[str, Path], *extra: str):
    args = ["recommend", "--events", str(files["events"]), "--catalog", str(files["catalog"])]
    return CliRunner().invoke(
        app, [*args, "--out", str(files["out"]), "--policy", "ladder", *extra]
    )


def test_candidates_column_restricts_each_user(files, log):
    res = _recommend(files, "--candidates-column", "allowed")
    assert res.exit_code == 0, res.output
    out = pd.read_csv(files["out"])
    users = log.frame["user_id"].drop_duplicates().tolist()
    given = pd.read_csv(files["events"]).groupby("user_id")["allowed"].count()
    listed = out["user_id"].map(given).to_numpy() > 0
    odd = out["user_id"].isin(users[1::2]).to_numpy()
    assert set(out.loc[odd & listed, "step"].dropna()) <= {"take_quiz", "create_account"}
    assert set(out.loc[~odd & listed, "step"].dropna()) <= {"purchase"}
    assert out.loc[listed, "step"].notna().sum() > 50
    # a user with no list (every value empty) may get any available step
    assert "read_intro" in set(out.loc[~listed, "step"])
    assert set(out["reason"].dropna()) <= {"converted", "no_eligible_step"}


def test_candidates_column_errors_name_the_row_and_column(files):
    frame = pd.read_csv(files["events"])
    frame.loc[4, "allowed"] = "take_quiz|no_such_step"
    frame.to_csv(files["events"], index=False)
    res = _recommend(files, "--candidates-column", "allowed")
    assert res.exit_code == 2
    assert (
        "row 5, column 'allowed': unknown step 'no_such_step' in the candidates list" in res.output
    )
    res = _recommend(files, "--candidates-column", "segment")
    assert res.exit_code == 2 and "no context column 'segment' in the log" in res.output


# -- the planner's look-ahead ------------------------------------------------------------------
@pytest.fixture(scope="module")
def scorer(world, log):
    bundle = bundle_from_frame(log.frame, world.catalog, ["channel"], params={"n_estimators": 20})
    return ModelScorer(bundle, world.catalog)


def test_the_look_ahead_only_imagines_steps_that_exist_for_the_user(world, scorer):
    cat = world.catalog
    clip = cat.index[RESTRICTED]
    intro = cat.index["read_intro"]
    roots = [(UserState(), [intro], 0.0, {"channel": ch}) for ch in ("email", "search")]
    states = root_block(scorer.spec, cat, roots).states
    assert states.unavailable is not None
    assert states.unavailable[:, clip].tolist() == [False, True]
    assert states.unavailable.sum() == 1
    # children inherit it: after accepting the intro, the clip is next only for email
    kids = states.after(
        cat, np.array([0, 1]), np.array([intro, intro]), np.ones(2, bool), np.ones(2)
    )
    assert kids.unavailable is not None and kids.unavailable[:, clip].tolist() == [False, True]
    # the same root candidates and state, but another set of existing steps: another plan key
    planner = Planner()
    keys = [planner.cache_key(*root, scorer, cat, 3600.0) for root in roots]
    assert keys[0] != keys[1]
    # and the planner, on the same candidates, values the intro differently when the clip
    # (the ladder's next rung) does not exist for the user: an email user, whose offers of
    # the clip the model has learned from, under a catalog that keeps the clip from email
    elsewhere = Catalog.from_data(
        [
            {**s.to_dict(), "available_when": {"channel": ["search"]}}
            if s.id == RESTRICTED
            else s.to_dict()
            for s in cat
        ]
    )
    q_email, _ = planner.bind(scorer, cat).q_values(*roots[0], scorer, cat)
    q_without, _ = planner.bind(scorer, elsewhere).q_values(*roots[0], scorer, elsewhere)
    assert q_email[0] != q_without[0]
