"""The random world family: reproducible, inside its documented ranges, wide, and exact."""

from __future__ import annotations

import collections

import pytest

from features.errors import InputError
from simulation.simulate import (
    FIXED_POLICIES,
    ExactSolver,
    generate_log,
    logging_distribution,
    monte_carlo,
)
from simulation.world_family import random_world_data
from simulation.worlds import load_world

SEEDS = range(40)


def test_same_seed_same_world_and_different_seeds_differ() -> None:
    assert random_world_data(7) == random_world_data(7)
    assert random_world_data(7) != random_world_data(8)
    assert load_world("random:7").catalog == load_world("random:7").catalog


@pytest.mark.parametrize("bad", ["random:", "random:x", "random:-1"])
def test_a_malformed_random_world_name_is_an_input_error(bad: str) -> None:
    with pytest.raises(InputError, match="random:SEED"):
        load_world(bad)


def test_every_world_lies_inside_the_documented_ranges() -> None:
    bases = collections.Counter()
    for seed in SEEDS:
        w = load_world(f"random:{seed}")
        goals = w.catalog.goal_indices
        assert 4 <= w.catalog.n <= 16
        assert 1 <= len(goals) <= 3
        assert max(w.catalog.goal_rewards) == pytest.approx(1.0)
        assert all(0.4 - 1e-9 <= w.catalog.goal_rewards[g] <= 1.0 for g in goals)
        assert 2 <= len(w.types) <= 5
        assert 4 <= w.max_asks <= 15
        assert 0.1 <= w.logging_uniform <= 0.7
        for t in w.types:
            # informative but never decisive: no channel certain, every channel possible
            assert max(t.channel.values()) <= 0.7 + 1e-3
            assert min(t.channel.values()) > 0
            assert 0 <= t.leave < 0.45
        bases[w.logging_base] += 1
    assert set(bases) == {"ladder", "big_ask", "random"}


def test_no_single_fixed_policy_wins_everywhere() -> None:
    winners = collections.Counter()
    for seed in SEEDS:
        table = ExactSolver(load_world(f"random:{seed}")).table()
        winners[max(FIXED_POLICIES, key=lambda p: table[p]["overall"])] += 1
        for p in FIXED_POLICIES:
            assert table["optimum"]["overall"] >= table[p]["overall"] - 1e-12
    assert len(winners) >= 2
    assert max(winners.values()) <= 0.8 * len(SEEDS)


def _seed_with(predicate) -> int:
    return next(s for s in range(200) if predicate(load_world(f"random:{s}")))


@pytest.mark.parametrize(
    "what",
    ["fatigue and several goals", "prerequisites and a big_ask incumbent"],
)
def test_monte_carlo_agrees_with_the_exact_programme(what: str) -> None:
    if what.startswith("fatigue"):
        seed = _seed_with(
            lambda w: (
                len(w.catalog.goal_indices) >= 2
                and all(t.fatigue > 0 for t in w.types)
                and w.catalog.n <= 9
            )
        )
    else:
        seed = _seed_with(lambda w: any(w.catalog.requires_mask) and w.logging_base == "big_ask")
    world = load_world(f"random:{seed}")
    table = ExactSolver(world).table()
    for policy in ("ladder", "big_ask", "random"):
        mean, se = monte_carlo(world, FIXED_POLICIES[policy], users=3000, seed=5)
        assert abs(mean - table[policy]["overall"]) <= 3.5 * se + 1e-9, (seed, policy)


def test_logs_carry_the_incumbents_exact_propensities() -> None:
    for base in ("ladder", "big_ask", "random"):
        seed = _seed_with(lambda w, b=base: w.logging_base == b)
        world = load_world(f"random:{seed}")
        cols = generate_log(world, 60, seed=1)
        assert cols["step"], base
        for p in cols["propensity"]:
            assert 0 < p <= 1
        for eligible in ([0], list(range(world.catalog.n))):
            elig = [s for s in eligible if s in world.catalog.eligible_indices(0)] or [
                world.catalog.eligible_indices(0)[0]
            ]
            dist = logging_distribution(world, elig)
            assert sum(dist.values()) == pytest.approx(1.0)
            if base == "random":
                assert len(set(dist.values())) == 1
