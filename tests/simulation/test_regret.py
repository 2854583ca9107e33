"""Decision regret must measure what it claims: zero for the reference, lost value otherwise."""

from __future__ import annotations

import pytest

from simulation.regret import RegretMeter
from simulation.rollout import run_users
from simulation.simulate import TypeBlindReference, big_ask_choice, ladder_choice
from simulation.worlds import load_world

USERS = 400


def _fixed(world, rule):
    cat = world.catalog
    return lambda state, u: rule(cat, cat.eligible_indices(u.state[0], cat.available(u.context)))


def test_the_type_blind_reference_gives_up_nothing_and_walks_its_own_users() -> None:
    """The meter's belief is the reference's: a chooser that acts on it is the reference."""
    world = load_world("eager")
    ref = TypeBlindReference(world)
    meter = RegretMeter(world, lambda state, u: ref.choose(meter.belief, u.state), ref)
    res = run_users(world, USERS, 5, meter)
    assert len(meter.per_user) == USERS
    assert max(meter.per_user) < 1e-12
    assert res.conversion == ref.monte_carlo(USERS, 5)[0]


@pytest.mark.parametrize("name", ["ladder", "eager", "two_goals"])
def test_regret_is_the_value_a_fixed_rule_loses(name: str) -> None:
    """Per user it is never negative; on average it is close to the exact value the rule
    gives up against the reference, so the worse rule of a world carries the larger regret."""
    world = load_world(name)
    ref = TypeBlindReference(world)
    table = ref.solver.table()
    blind = ref.monte_carlo(10 * USERS, 5)[0]  # its own error well below the band's width
    regret = {}
    for rule_name, rule in (("ladder", ladder_choice), ("big_ask", big_ask_choice)):
        meter = RegretMeter(world, _fixed(world, rule), ref)
        run_users(world, USERS, 5, meter)
        assert min(meter.per_user) >= 0.0
        regret[rule_name], se = meter.summary()
        lost = blind - table[rule_name]["overall"]
        assert 0.6 * lost < regret[rule_name] < 1.4 * lost, (rule_name, regret[rule_name], lost)
        assert 0 < se < 0.2 * regret[rule_name]
    worse = min(regret, key=lambda r: table[r]["overall"])
    assert regret[worse] == max(regret.values())


def test_regret_is_deterministic_given_the_users() -> None:
    world = load_world("random:3")
    runs = []
    for _ in range(2):
        meter = RegretMeter(world, _fixed(world, ladder_choice))
        run_users(world, 100, 9, meter)
        runs.append(meter.per_user)
    assert runs[0] == runs[1]
    assert sum(runs[0]) > 0
