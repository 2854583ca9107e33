"""The holdout of ``nextstep train`` (``training.holdout``), without MLflow.

The log mimics a real product's: whole cohorts start on the same day and keep coming back for
weeks, so users straddle any calendar cut. A time holdout must put every offer at or after the
cut in the holdout and none in training, while the held-out offers keep their users' earlier
history as features.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.events import validate_frame, write_events
from features.offline import build_offline_features
from features.spec import FeatureSpec
from features.state import STATE_FEATURES
from nextstep.cli.app import app
from simulation.worlds import load_world
from training.holdout import Holdout, HoldoutError, arrival_mask, users_with
from training.pipeline import _write_catalog, fit_and_evaluate

DAY = 86400.0
T0 = 1_700_000_000.0
COHORTS = {"a": 0, "b": 0, "c": 5}  # cohorts a and b start on the same day


def cohort_log(seed: int = 0, users: int = 30, offers: int = 10) -> pd.DataFrame:
    """Users of three cohorts, each offered non-goal steps every few days for weeks."""
    catalog = load_world("ladder").catalog
    steps = [s.id for s in catalog if not s.is_goal]
    rng = np.random.default_rng(seed)
    rows = []
    for cohort, start_day in COHORTS.items():
        for u in range(users):
            ts = T0 + start_day * DAY + rng.uniform(0, 3600)
            for _ in range(offers):
                step = str(rng.choice(steps))
                p = 0.7 if step in steps[:2] else 0.35
                rows.append(
                    {
                        "user_id": f"{cohort}{u:03d}",
                        "ts": ts,
                        "step": step,
                        "outcome": "accepted" if rng.random() < p else "declined",
                        "channel": str(rng.choice(["email", "push"])),
                    }
                )
                ts += rng.uniform(2, 6) * DAY
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def log():
    return validate_frame(cohort_log(), load_world("ladder").catalog, source="cohorts")


def test_time_cut_puts_no_training_row_at_or_after_it(log):
    f = log.frame
    ts = f["ts"].to_numpy()
    split = Holdout(fraction=0.2)
    ho = split.mask(f)
    cut = split.cut(ts)
    assert ho.sum() == np.ceil(0.2 * len(f))  # the last 20% of the offers (no equal times here)
    assert (ts[~ho] < cut).all() and (ts[ho] >= cut).all()
    # cohorts a and b start together; both are split by time, not assigned whole to one side
    for cohort in ("a", "b"):
        mine = f["user_id"].str.startswith(cohort).to_numpy()
        assert (mine & ho).any() and (mine & ~ho).any()
    # users straddle the cut: their held-out offers come after training offers of their own
    straddle = set(f.loc[ho, "user_id"]) & set(f.loc[~ho, "user_id"])
    assert len(straddle) >= 10


def test_arrival_split_leaks_later_offers_into_training(log):
    """The old default, still available: with same-day cohorts it trains on offers dated after
    the holdout's first offer, which the calendar cut never does."""
    f = log.frame
    ts = f["ts"].to_numpy()
    ho = arrival_mask(f, 0.2)
    assert (ts[~ho] > ts[ho].min()).sum() > 0
    ho_time = Holdout().mask(f)
    assert (ts[~ho_time] > ts[ho_time].min()).sum() == 0


def test_held_out_offers_keep_their_full_history(log):
    """Features of a held-out offer count the user's offers before the cut (point in time)."""
    f = log.frame
    catalog = load_world("ladder").catalog
    spec = FeatureSpec.from_frame(f, ["channel"])
    ho = Holdout().mask(f)
    X = build_offline_features(f, catalog, spec).X
    n_asks = X[:, STATE_FEATURES.index("n_asks")]
    earlier = f.groupby("user_id")["ts"].rank(method="first").to_numpy() - 1
    np.testing.assert_array_equal(n_asks[ho], earlier[ho])
    assert (n_asks[ho] > 0).mean() > 0.9  # nearly every held-out offer has history

    out = fit_and_evaluate(log, catalog, params={"n_estimators": 20})
    assert out.holdout_info["strategy"] == "time"
    np.testing.assert_array_equal(out.holdout, ho)
    assert out.train_rows + out.holdout_rows == len(f)
    # the artifact keeps the held-out users' whole history
    keep = users_with(f, ho)
    assert keep[ho].all() and (keep & ~ho).any()


def test_holdout_from_sets_the_cut(log):
    f = log.frame
    ts = f["ts"].to_numpy()
    cut = T0 + 35 * DAY
    split = Holdout.of("time", None, "2023-12-19T22:13:20Z")  # = T0 + 35 days
    assert split.start == cut
    ho = split.mask(f)
    np.testing.assert_array_equal(ho, ts >= cut)
    assert Holdout.of("time", None, str(int(cut))).start == cut  # epoch seconds work too
    info = fit_and_evaluate(
        log, load_world("ladder").catalog, holdout=split, params={"n_estimators": 10}
    ).holdout_info
    assert info == {
        "strategy": "time",
        "fraction": 0.2,
        "from": "2023-12-19T22:13:20Z",
        "from_ts": cut,
        "from_given": True,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("time", 0.0, None), "--holdout-fraction must be in"),
        (("time", 1.5, None), "--holdout-fraction must be in"),
        (("time", 0.3, "2024-01-01"), "not both"),
        (("arrival", None, "2024-01-01"), "needs --holdout-by time"),
        (("calendar", None, None), "--holdout-by must be one of"),
        (("time", None, "yesterday"), "--holdout-from: ts is not an ISO-8601"),
    ],
)
def test_bad_holdout_options_are_refused(args, message):
    with pytest.raises(HoldoutError, match=message):
        Holdout.of(*args)


def test_a_cut_outside_the_log_is_a_clear_error(log):
    with pytest.raises(HoldoutError, match="no offer at or after the holdout cut 2030"):
        Holdout.of("time", None, "2030-01-01").mask(log.frame)
    with pytest.raises(HoldoutError, match="no offer before the holdout cut 2000"):
        Holdout.of("time", None, "2000-01-01").mask(log.frame)


def test_train_cli_reports_a_bad_cut_with_exit_code_2(tmp_path, log, monkeypatch):
    monkeypatch.setenv("NEXTSTEP_HOME", str(tmp_path / "home"))
    write_events(log.frame.drop(columns=["row"]), tmp_path / "events.csv")
    _write_catalog(load_world("ladder").catalog, tmp_path / "catalog.yaml")
    base = ["train", "--events", str(tmp_path / "events.csv")]
    base += ["--catalog", str(tmp_path / "catalog.yaml")]
    res = CliRunner().invoke(app, [*base, "--holdout-from", "2030-01-01T00:00:00Z"])
    assert res.exit_code == 2
    assert "no offer at or after the holdout cut 2030-01-01T00:00:00Z" in res.output
    res = CliRunner().invoke(app, [*base, "--holdout-fraction", "2"])
    assert res.exit_code == 2 and "--holdout-fraction must be in (0, 1)" in res.output
