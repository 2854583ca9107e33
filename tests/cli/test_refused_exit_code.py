"""One exit-code rule for a refused promotion: ``train --promote`` exits 1 like ``promote``
(an input error stays 2, success 0)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from features.catalog import load_catalog
from features.events import load_events, write_events
from nextstep.cli.app import REFUSED_EXIT_CODE, app
from simulation.simulate import write_simulation
from simulation.worlds import load_world
from training.pipeline import holdout_mask


@pytest.mark.slow
def test_train_promote_exits_1_when_the_gate_refuses(tmp_path: Path, nextstep_home: Path) -> None:
    write_simulation(load_world("ladder"), 1500, 1, tmp_path)
    catalog = load_catalog(tmp_path / "catalog.yaml")
    frame = load_events(tmp_path / "events.csv", catalog).frame
    train = ~holdout_mask(frame)
    goals = frame["step"].isin([catalog.ids[g] for g in catalog.goal_indices]).to_numpy()
    bad = frame.drop(columns=["row"]).copy()
    shuffle = train & ~goals
    rng = np.random.default_rng(0)
    bad.loc[shuffle, "outcome"] = rng.permutation(bad.loc[shuffle, "outcome"].to_numpy())
    bad.loc[train & goals, "outcome"] = "declined"
    write_events(bad, tmp_path / "bad.csv")

    runner = CliRunner()
    args = ["train", "--catalog", str(tmp_path / "catalog.yaml"), "--promote", "--events"]
    first = runner.invoke(app, [*args, str(tmp_path / "events.csv")])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, [*args, str(tmp_path / "bad.csv")])
    assert "promotion: refused" in " ".join(second.stdout.split())
    assert second.exit_code == REFUSED_EXIT_CODE == 1
