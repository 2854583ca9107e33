"""``benchmarks.quality --family --fit served`` measures the bundle ``nextstep train`` serves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.quality_family import fitted_bundle
from nextstep.cli.commands import train_command
from simulation.simulate import generate_log, write_simulation
from simulation.worlds import load_world
from training.modelio import load_model_bundle


@pytest.mark.slow
def test_the_served_fit_is_the_bundle_train_registers(tmp_path: Path, nextstep_home: Path) -> None:
    world = load_world("random:3")
    write_simulation(world, 600, 3, tmp_path / "data")
    trained = train_command(
        events=tmp_path / "data" / "events.csv", catalog=tmp_path / "data" / "catalog.yaml"
    )
    registered, _ = load_model_bundle(f"models:/nextstep/{trained.version}")

    frame = pd.DataFrame(generate_log(world, 600, 3))
    frame["row"] = np.arange(1, len(frame) + 1)
    served = fitted_bundle(frame, world.catalog, 3, "served")
    every_row = fitted_bundle(frame, world.catalog, 3, "every-row")

    assert served.spec.names == registered.spec.names
    assert served.spec.names != every_row.spec.names  # the step-id feature
    X = np.random.default_rng(0).uniform(0, 3, size=(64, len(served.spec.names)))
    X[:, served.spec.categorical_indices] = 0
    np.testing.assert_array_equal(
        served.readiness.positive_proba(X), registered.readiness.positive_proba(X)
    )
    np.testing.assert_array_equal(served.value.predict(X), registered.value.predict(X))
