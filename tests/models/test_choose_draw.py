"""The exploration draw: ``draw_index`` picks what numpy's ``Generator.choice`` with ``p`` picks
for the same uniform number, and ``seeded_uniform`` gives each (seed, user, ask) its own
reproducible, uniform number."""

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
        assert draw_index(np.random.default_rng(seed).random(), probs) == expected


def test_seeded_uniform_is_reproducible_uniform_and_distinct_per_user_and_ask() -> None:
    from models.decide import seeded_uniform

    us = np.array([seeded_uniform(3, f"user-{i}", i % 7) for i in range(20_000)])
    assert ((us >= 0) & (us < 1)).all()
    assert us.tolist() == [seeded_uniform(3, f"user-{i}", i % 7) for i in range(20_000)]
    counts = np.histogram(us, bins=20, range=(0, 1))[0]
    chi2 = float(((counts - 1000) ** 2 / 1000).sum())
    assert chi2 < 43.8  # the 0.999 quantile of chi2 with 19 degrees of freedom
    assert len(set(us.tolist())) == len(us)
    same_user = {seeded_uniform(3, "u", n) for n in range(50)}
    assert len(same_user) == 50  # each ask of one user draws anew
    assert seeded_uniform(4, "u", 0) != seeded_uniform(3, "u", 0)  # the seed matters
