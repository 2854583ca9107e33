"""Decision regret must measure what it claims: zero for the reference, lost value otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulation.regret import RegretMeter, fixed_rule_choosers, paired_gap
from simulation.rollout import Metered, OverHttp, run_users
from simulation.simulate import TypeBlindReference, write_simulation
from simulation.worlds import load_world
from tests.service.helpers import ServerProcess

USERS = 400


def test_the_type_blind_reference_gives_up_nothing_and_walks_its_own_users() -> None:
    """The meter's belief is the reference's: a chooser that acts on it is the reference."""
    world = load_world("eager")
    ref = TypeBlindReference(world)

    class Watching(RegretMeter):
        """Keeps the tracker of the user being walked (``Metered`` walks one at a time)."""

        def start(self, u):
            self.current = super().start(u)
            return self.current

    meter = Watching(world, ref)

    def reference(state, u):
        return ref.choose(meter.current.belief, u.state)

    res = run_users(world, USERS, 5, Metered(world, reference, meter))
    assert len(meter.per_user) == USERS
    assert max(meter.per_user.values()) < 1e-12
    assert res.conversion == ref.monte_carlo(USERS, 5)[0]


@pytest.mark.parametrize("name", ["ladder", "eager", "two_goals"])
def test_regret_is_the_value_a_fixed_rule_loses(name: str) -> None:
    """Per user it is never negative; on average it is close to the exact value the rule
    gives up against the reference, so of two rules clearly apart the worse one carries the
    larger regret."""
    world = load_world(name)
    ref = TypeBlindReference(world)
    table = ref.solver.table()
    blind = ref.monte_carlo(10 * USERS, 5)[0]  # its own error well below the band's width
    meters = {}
    for rule, choose in fixed_rule_choosers(world, seed=3).items():
        meter = RegretMeter(world, ref)
        res = run_users(world, USERS, 5, Metered(world, choose, meter))
        exact = table[rule]["overall"]
        assert abs(res.conversion - exact) < 3 * res.se, (rule, res.conversion, exact)
        assert min(meter.per_user.values()) >= 0.0
        regret, se = meter.summary()
        lost = blind - exact
        assert 0.6 * lost < regret < 1.4 * lost, (rule, regret, lost)
        assert 0 < se < 0.2 * regret
        meters[rule] = meter
    for a in meters:  # rules whose exact values are clearly apart are ordered alike
        for b in meters:
            if table[a]["overall"] > table[b]["overall"] + 0.05:
                assert meters[a].summary()[0] < meters[b].summary()[0], (a, b)
    gap, gap_se = paired_gap(meters["ladder"], meters["big_ask"])
    assert gap == pytest.approx(meters["ladder"].summary()[0] - meters["big_ask"].summary()[0])
    assert gap_se > 0


def test_regret_is_deterministic_given_the_users() -> None:
    world = load_world("random:3")
    runs = []
    for _ in range(2):
        meter = RegretMeter(world)
        run_users(
            world, 100, 9, Metered(world, fixed_rule_choosers(world, seed=1)["random"], meter)
        )
        runs.append(meter.per_user)
    assert runs[0] == runs[1]
    assert sum(runs[0].values()) > 0


@pytest.mark.e2e
def test_a_live_service_is_scored_as_the_same_policy_in_process(tmp_path: Path) -> None:
    """``OverHttp`` with a meter: a service serving the ladder gets, user by user, the regret
    the ladder rule gets in process on the same users."""
    world = load_world("ladder")
    write_simulation(world, 50, 1, tmp_path / "sim")
    live = RegretMeter(world)
    with ServerProcess(
        tmp_path,
        tmp_path / "sim" / "catalog.yaml",
        NEXTSTEP_HOME=str(tmp_path / "home"),
        NEXTSTEP_POLICY="ladder",
        NEXTSTEP_EXPLORATION="none",
    ) as server:
        server.wait_ready()
        walk = OverHttp(world, server.base, concurrency=4, meter=live)
        res = run_users(world, 60, 5, walk, prefix="live")
    assert res.errors == 0 and res.invalid == 0
    local = RegretMeter(world, live.reference)
    ladder = fixed_rule_choosers(world, seed=0)["ladder"]
    run_users(world, 60, 5, Metered(world, ladder, local), prefix="live")
    assert live.per_user.keys() == local.per_user.keys() and len(live.per_user) == 60
    assert live.per_user == pytest.approx(local.per_user, abs=1e-12)
    assert sum(live.per_user.values()) > 0
