"""The exploration draw is numpy's ``Generator.choice`` with ``p``, index for index, from the
same seeded stream (so seeded decisions did not change when the draw got cheaper)."""

from __future__ import annotations

import numpy as np

from models.policy_base import draw_index


def test_draw_matches_generator_choice() -> None:
    rng = np.random.default_rng(7)
    for trial in range(3000):
        n = int(rng.integers(2, 12))
        probs = rng.dirichlet(np.ones(n) * (0.2 if trial % 2 else 2.0))
        if trial % 5 == 0:
            probs = 0.95 * np.eye(n)[0] + 0.05 / n  # epsilon-greedy's shape
        seed = int(rng.integers(0, 2**63))
        expected = int(np.random.default_rng(seed).choice(n, p=probs / probs.sum()))
        assert draw_index(np.random.default_rng(seed), probs) == expected
