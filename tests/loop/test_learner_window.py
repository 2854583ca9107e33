"""The learner's data window keeps whole users: a user whose history starts before the window
is left out, not cut (their in-window offers would be learned from with a wrong state, e.g. a
purchase after three accepts taken for a first ask)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from features.catalog import load_catalog
from loop.export import export_log, read_store
from loop.learner import Learner, LearnerConfig
from simulation.simulate import write_simulation
from simulation.worlds import load_world
from tests.loop.store_log import fill_store


def test_the_window_keeps_only_users_who_arrived_in_it(tmp_path: Path) -> None:
    write_simulation(load_world("ladder"), 300, 3, tmp_path / "sim")
    catalog = tmp_path / "sim" / "catalog.yaml"
    url = f"sqlite:///{tmp_path / 'service.db'}"
    fill_store(url, tmp_path / "sim" / "events.csv", catalog)
    dec, _ = read_store(url)
    since = float(dec["ts"].min() + (dec["ts"].max() - dec["ts"].min()) / 2)
    first = dec.groupby("user_id")["ts"].min()

    learner = Learner(catalog, LearnerConfig(), url=url)
    try:
        cut = export_log(load_catalog(catalog), since=since, url=url).log
        kept = learner._arrived_since(cut, since)
    finally:
        learner.close()
    straddling = set(cut.frame["user_id"]) - set(first[first >= since].index)
    assert straddling  # the simulated users' visits span the window's start
    assert set(kept.frame["user_id"]) == set(first[first >= since].index)
    assert kept.frame["ts"].min() >= since
    # the kept users' rows are all of theirs, untouched
    whole = cut.frame[~cut.frame["user_id"].isin(straddling)].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept.frame, whole)
