"""Fixtures shared by the model tests."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from simulation.worlds import World, load_world

HORIZON = 3
_EFFECTS = ("resistance", "momentum", "decline_penalty", "value_coef", "fatigue")


@pytest.fixture(scope="session")
def tiny_world() -> World:
    """The first small random world with prerequisites, several goals and a type that has every
    effect, cut to that type alone and three asks: an exact programme small enough to solve,
    with every term of the readiness formula in play. Its steps differ in what a feature row
    says about them (effort, stage, value, is_goal), so a row names its step."""
    for seed in range(500):
        w = load_world(f"random:{seed}")
        cat = w.catalog
        if not (4 <= cat.n <= 6 and len(cat.goal_indices) >= 2 and any(cat.requires_mask)):
            continue
        arr = cat.arrays
        rows = np.column_stack([arr[c] for c in ("effort", "stage", "value", "is_goal")])
        if len({tuple(r) for r in rows.tolist()}) < cat.n:
            continue
        for t in w.types:
            if all(getattr(t, e) != 0 for e in _EFFECTS):
                return dataclasses.replace(
                    w, types=(dataclasses.replace(t, weight=1.0),), max_asks=HORIZON
                )
    raise AssertionError("no such world in the family")  # pragma: no cover
