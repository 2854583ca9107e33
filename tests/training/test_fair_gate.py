"""A ``train --refit`` champion is gated only on held-out offers it was never fitted on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation.evaluate import log_loss
from features.catalog import load_catalog
from features.events import load_events
from features.timeutil import parse_ts
from loop.learn_gate import gate_candidate
from loop.promote import promote_version
from nextstep.cli.commands import train_command
from simulation.simulate import write_simulation
from simulation.synthetic import bundle_from_frame
from simulation.worlds import load_world
from training import tracking
from training.holdout import Holdout
from training.modelio import load_model_bundle
from training.pipeline import score_bundle
from training.refit_scope import (
    MIN_FRESH_OFFERS,
    REFIT_UNTIL,
    fair_rows,
    no_unseen_users,
    unseen_users,
)

UNTIL = "2025-03-01T00:00:00Z"


def _champion(until: str | None) -> dict[str, str]:
    return {} if until is None else {REFIT_UNTIL: until}


def test_a_champion_fitted_without_these_offers_is_scored_on_all_of_them() -> None:
    ts = np.linspace(parse_ts(UNTIL) - 86400, parse_ts(UNTIL) + 86400, 500)
    y = np.arange(500) % 2
    assert fair_rows(_champion(None), "1", y, ts).rows is None  # not refitted
    later = fair_rows(_champion("2025-02-01T00:00:00Z"), "1", y, ts)  # refitted on older data
    assert later.rows is None and later.unfair is None


def test_a_refitted_champion_is_scored_only_on_newer_offers() -> None:
    ts = np.linspace(parse_ts(UNTIL) - 86400, parse_ts(UNTIL) + 86400, 1000)
    y = np.arange(1000) % 2
    fair = fair_rows(_champion(UNTIL), "3", y, ts)
    assert fair.unfair is None
    np.testing.assert_array_equal(fair.rows, ts > parse_ts(UNTIL))
    assert f"on the {int((ts > parse_ts(UNTIL)).sum())} of 1000 held-out offers" in fair.scope
    assert "champion v3 was refitted on every offer up to" in fair.scope


@pytest.mark.parametrize(
    ("n_newer", "outcomes"), [(MIN_FRESH_OFFERS - 1, "both"), (MIN_FRESH_OFFERS + 50, "one")]
)
def test_too_few_unseen_offers_leave_no_fair_comparison(n_newer: int, outcomes: str) -> None:
    base = parse_ts(UNTIL)
    ts = np.r_[base - np.arange(1, 301), base + np.arange(1, n_newer + 1)].astype(float)
    y = np.r_[np.arange(300) % 2, np.ones(n_newer) if outcomes == "one" else np.arange(n_newer) % 2]
    fair = fair_rows(_champion(UNTIL), "2", y, ts)
    assert fair.rows is None
    assert fair.unfair is not None
    assert f"only {n_newer} of this holdout's {300 + n_newer} offers are newer" in fair.unfair


def test_only_users_who_arrived_after_a_refitted_champions_data_are_unseen() -> None:
    base = parse_ts(UNTIL)
    events = pd.DataFrame(
        {
            "user_id": ["old", "old", "straddles", "straddles", "new", "new"],
            "ts": [base - 10, base - 5, base - 1, base + 1, base + 1, base + 2],
        }
    )
    assert unseen_users(_champion(None), events) is None
    assert unseen_users(_champion(UNTIL), events)["user_id"].tolist() == ["new", "new"]
    only_old = events[events["user_id"] == "old"]
    assert unseen_users(_champion(UNTIL), only_old).empty
    reason = no_unseen_users(_champion(UNTIL), "4")
    assert "champion v4" in reason and UNTIL in reason


def _later_log(first: Path, second: Path, out: Path) -> Path:
    """``first`` then ``second`` shifted to start an hour after ``first`` ends, other users."""
    a, b = pd.read_csv(first), pd.read_csv(second)
    shift = pd.to_datetime(a["ts"]).max() - pd.to_datetime(b["ts"]).min() + pd.Timedelta("1h")
    b["ts"] = (pd.to_datetime(b["ts"]) + shift).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    b["user_id"] = "later_" + b["user_id"]
    b["decision_id"] = "later_" + b["decision_id"]
    pd.concat([a, b]).to_csv(out, index=False)
    return out


@pytest.mark.slow
def test_train_and_promote_gate_a_refitted_champion_fairly(
    tmp_path: Path, nextstep_home: Path
) -> None:
    """A refitted champion saw every offer of its log: a candidate from the same log has no
    unseen offer to be compared on, and one from a later log is compared on the newer offers
    only, where the champion's log loss is out-of-sample."""
    world = load_world("ladder")
    write_simulation(world, 600, 5, tmp_path / "a")
    write_simulation(world, 100, 6, tmp_path / "b")
    cat_path = tmp_path / "a" / "catalog.yaml"
    first = {"events": tmp_path / "a" / "events.csv", "catalog": cat_path}

    champion = train_command(**first, refit=True, promote=True)
    assert champion.promoted
    bundle, _ = load_model_bundle(f"models:/nextstep/{champion.version}")
    assert bundle.meta[REFIT_UNTIL] == champion.fingerprint["ts_max"]

    same = train_command(**first, promote=True)
    assert same.decision == "refused"
    assert f"champion v{champion.version} was refitted on every offer up to" in same.reason
    assert "only 0 of this holdout's" in same.reason
    again = promote_version(same.version)  # `nextstep promote` applies the same rule
    assert not again.promote and "only 0 of this holdout's" in again.reason

    events = _later_log(first["events"], tmp_path / "b" / "events.csv", tmp_path / "ab.csv")
    later = train_command(events=events, catalog=cat_path, promote=True)
    assert "held-out offers newer than its data" in later.reason
    catalog = load_catalog(cat_path)
    frame = load_events(events, catalog).frame
    holdout = Holdout().mask(frame)
    ts = frame["ts"].to_numpy(dtype=np.float64)[holdout]
    fresh = ts > parse_ts(champion.fingerprint["ts_max"])
    assert MIN_FRESH_OFFERS <= fresh.sum() < holdout.sum()  # the holdout straddles its data
    y, p, _ = score_bundle(bundle, frame, catalog, holdout)
    assert later.champion_logloss == pytest.approx(log_loss(y[fresh], p[fresh]))
    assert f"on the {int(fresh.sum())} of {int(holdout.sum())} held-out offers" in later.reason

    assert not later.promoted  # the champion saw 600 users up to the cut, the candidate fewer

    # the learner's gate: log loss on the newer offers, the planner's value on the new users
    train_rows = frame.loc[~holdout]
    candidate_bundle = bundle_from_frame(train_rows, catalog, (), params={"n_estimators": 20})
    held = frame.loc[frame["user_id"].isin(frame.loc[holdout, "user_id"])]
    result = gate_candidate(candidate_bundle, frame, holdout, held, catalog, margin=0.0)
    assert "held-out offers newer than its data" in result.reason
    new_users = held.loc[held["user_id"].str.startswith("later_"), "user_id"].nunique()
    assert result.ope is not None and result.ope.users == new_users < held["user_id"].nunique()

    # a refitted candidate was fitted on its own holdout: against a refitted champion no
    # offer is left that neither saw; against a plain one, `promote` takes its run's number
    candidate = train_command(events=events, catalog=cat_path, refit=True)
    decision = promote_version(candidate.version)
    assert not decision.promote
    assert f"version {candidate.version} was refitted on its own holdout" in decision.reason
    tracking.set_alias(tracking.CHAMPION, same.version)  # a champion fitted without the holdout
    decision = promote_version(candidate.version)
    assert "the candidate's number is its run's" in decision.reason
    assert f"holdout log loss {candidate.metrics['lgbm']['logloss']:.5f}" in decision.reason

    # with the refitted champion back, train --policy-gate values both planners on the new
    # users too (it runs once log loss passes, which the tolerance makes sure of)
    tracking.set_alias(tracking.CHAMPION, champion.version)
    gated = train_command(
        events=events, catalog=cat_path, promote=True, policy_gate=True, tolerance=0.1
    )
    assert "policy gate:" in gated.reason and "cannot be valued" not in gated.reason


@pytest.mark.slow
def test_the_learner_gate_does_not_score_a_refitted_champion_in_sample(
    tmp_path: Path, nextstep_home: Path
) -> None:
    """The learning loop's window overlaps the log a refitted champion saw: its gate refuses
    rather than compare log losses the champion earned on its own training offers."""
    write_simulation(load_world("ladder"), 400, 5, tmp_path)
    paths = {"events": tmp_path / "events.csv", "catalog": tmp_path / "catalog.yaml"}
    champion = train_command(**paths, refit=True, promote=True)
    catalog = load_catalog(paths["catalog"])
    frame = load_events(paths["events"], catalog).frame
    holdout = Holdout().mask(frame)
    candidate = bundle_from_frame(frame.loc[~holdout], catalog, (), params={"n_estimators": 20})
    result = gate_candidate(candidate, frame, holdout, frame, catalog, margin=0.0)
    assert not result.promote
    assert f"champion v{champion.version} was refitted on every offer up to" in result.reason
    assert f"only 0 of this holdout's {int(holdout.sum())} offers are newer" in result.reason


@pytest.mark.slow
def test_the_learner_gate_scores_a_champion_fitted_apart_on_the_whole_holdout(
    tmp_path: Path, nextstep_home: Path
) -> None:
    """Without a champion the candidate is promoted; against a champion fitted on other offers
    both are scored on every held-out offer, and the champion's own model ties with it."""
    write_simulation(load_world("ladder"), 400, 5, tmp_path)
    paths = {"events": tmp_path / "events.csv", "catalog": tmp_path / "catalog.yaml"}
    catalog = load_catalog(paths["catalog"])
    frame = load_events(paths["events"], catalog).frame
    holdout = Holdout().mask(frame)
    candidate = bundle_from_frame(frame.loc[~holdout], catalog, (), params={"n_estimators": 20})
    first = gate_candidate(candidate, frame, holdout, frame, catalog, margin=0.0)
    assert first.promote and first.champion_version is None
    assert first.reason == "no champion yet: the candidate becomes champion"

    champion = train_command(**paths, promote=True)
    own, _ = load_model_bundle(f"models:/{tracking.MODEL_NAME}/{champion.version}")
    same = gate_candidate(own, frame, holdout, frame, catalog, margin=0.0)
    y, p, _ = score_bundle(own, frame, catalog, holdout)
    assert same.champion_version == champion.version
    assert same.candidate_logloss == same.champion_logloss == pytest.approx(log_loss(y, p))
    assert f"on {int(holdout.sum())} held-out offers" in same.reason
    assert same.ope_status != "not run"  # the champion bundle reached the OPE check
