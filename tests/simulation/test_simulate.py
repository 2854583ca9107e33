"""The simulator is the measuring instrument: its exact values must be right."""

from __future__ import annotations

import hashlib

import pytest

from features.errors import NextstepError
from simulation.rollout import reference_table
from simulation.simulate import (
    FIXED_POLICIES,
    Dynamics,
    ExactSolver,
    Population,
    TypeBlindReference,
    generate_log,
    make_user,
    monte_carlo,
    write_simulation,
)
from simulation.worlds import STATIONARY, load_world

WORLDS = sorted(STATIONARY)


@pytest.mark.parametrize("name", WORLDS)
def test_optimum_dominates_every_baseline_for_every_type(name: str) -> None:
    table = ExactSolver(load_world(name)).table()
    for policy in FIXED_POLICIES:
        for t, v in table[policy]["per_type"].items():
            assert table["optimum"]["per_type"][t] >= v - 1e-12, (policy, t)
        assert table["optimum"]["overall"] >= table[policy]["overall"]


def test_worlds_have_different_best_fixed_policies() -> None:
    best = {}
    for name in WORLDS:
        table = ExactSolver(load_world(name)).table()
        best[name] = max(FIXED_POLICIES, key=lambda p: table[p]["overall"])
    assert best["ladder"] == "ladder"
    assert best["eager"] == "big_ask"
    assert len(set(best.values())) >= 2


@pytest.mark.parametrize("name", WORLDS)
@pytest.mark.parametrize("policy", sorted(FIXED_POLICIES))
def test_monte_carlo_agrees_with_exact_values(name: str, policy: str) -> None:
    world = load_world(name)
    exact = ExactSolver(world).table()[policy]["overall"]
    mean, se = monte_carlo(world, FIXED_POLICIES[policy], users=3000, seed=42)
    assert abs(mean - exact) <= 3 * se, (mean, exact, se)


@pytest.mark.parametrize("name", WORLDS)
def test_type_blind_reference_lies_between_best_fixed_and_optimum(name: str) -> None:
    world = load_world(name)
    solver = ExactSolver(world)
    table = solver.table()
    mean, se = TypeBlindReference(world, solver).monte_carlo(users=1500, seed=3)
    best_fixed = max(table[p]["overall"] for p in FIXED_POLICIES)
    assert mean <= table["optimum"]["overall"] + 3 * se
    assert mean >= best_fixed - 3 * se


def test_simulation_is_reproducible_byte_for_byte(tmp_path) -> None:
    world = load_world("two_goals")
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_simulation(world, 300, 5, a)
    write_simulation(world, 300, 5, b)
    write_simulation(world, 300, 6, c)
    digest = lambda p: hashlib.sha256((p / "events.csv").read_bytes()).hexdigest()  # noqa: E731
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)
    assert (a / "catalog.yaml").read_text() == (b / "catalog.yaml").read_text()


def test_logged_propensities_are_exact_and_offers_are_eligible() -> None:
    world = load_world("two_goals")
    cat = world.catalog
    cols = generate_log(world, 400, 1)
    accepted: dict[str, int] = {}
    for u, s, o, p in zip(
        cols["user_id"], cols["step"], cols["outcome"], cols["propensity"], strict=True
    ):
        mask = accepted.get(u, 0)
        # nothing is offered after a goal: the user's accepts so far reach none
        assert not cat.is_converted(mask), (u, s)
        eligible = cat.eligible_indices(mask)
        i = cat.index[s]
        assert i in eligible
        uniform = world.logging_uniform / len(eligible)
        assert p in (pytest.approx(uniform), pytest.approx(uniform + 1 - world.logging_uniform))
        if o == "accepted":
            accepted[u] = mask | 1 << i
    converted = sum(cat.is_converted(m) for m in accepted.values())
    assert 0 < converted < len(set(cols["user_id"]))  # the check above met real conversions


def test_context_hints_at_the_type_without_revealing_it() -> None:
    """Channel is drawn from the type's own distribution (a hint), shared across types (not a
    label); and the types behave differently, so the log carries a signal about them."""
    world = load_world("ladder")
    cols = generate_log(world, 2000, 9, with_truth=True)
    first: dict[str, tuple[str, str]] = {}
    gaps: dict[str, list[float]] = {}
    last: dict[str, float] = {}
    for u, t, ch, ts in zip(
        cols["user_id"], cols["user_type"], cols["channel"], cols["ts"], strict=True
    ):
        assert first.setdefault(u, (t, ch)) == (t, ch)  # one type and channel per user
        if u in last:
            gaps.setdefault(t, []).append(float(ts) - last[u])
        last[u] = float(ts)
    by_channel: dict[str, set[str]] = {}
    for t, ch in first.values():
        by_channel.setdefault(ch, set()).add(t)
    assert any(len(types) > 1 for types in by_channel.values())  # not revealing
    for utype in world.types:  # the hint: each type's channels follow its own distribution
        users = [ch for t, ch in first.values() if t == utype.name]
        assert len(users) > 100
        for ch, prob in utype.channel.items():
            share = users.count(ch) / len(users)
            se = (prob * (1 - prob) / len(users)) ** 0.5
            assert abs(share - prob) <= 4 * se + 1e-9, (utype.name, ch, share, prob)
    # behaviour: how soon users come back ranks the types as their mean gaps do
    mean_gap = {t: sum(v) / len(v) for t, v in gaps.items()}
    by_world = [t.name for t in sorted(world.types, key=lambda t: t.gap_hours)]
    assert sorted(mean_gap, key=mean_gap.__getitem__) == by_world, mean_gap


def test_simulate_cli_writes_valid_files(tmp_path) -> None:
    from typer.testing import CliRunner

    from features.catalog import load_catalog
    from features.events import load_events
    from nextstep.cli.app import app

    res = CliRunner().invoke(
        app,
        ["simulate", "--world", "eager", "--users", "200", "--seed", "1", "--out", str(tmp_path)],
    )
    assert res.exit_code == 0, res.output
    cat = load_catalog(tmp_path / "catalog.yaml")
    log = load_events(tmp_path / "events.csv", cat)
    assert log.frame["user_id"].nunique() == 200
    assert set(log.frame["outcome"]) <= {"accepted", "declined", "dropped"}
    res = CliRunner().invoke(
        app, ["simulate", "--world", "nope", "--users", "2", "--out", str(tmp_path)]
    )
    assert res.exit_code == 2


def test_simulate_exact_prints_only_json_on_stdout(tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from nextstep.cli.app import app

    args = ["simulate", "--world", "ladder", "--users", "20", "--out", str(tmp_path), "--exact"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)  # nothing else mixed in
    assert "ladder" in table
    assert result.stderr.startswith("wrote ")


def test_type_blind_reference_can_walk_the_rollouts_own_users() -> None:
    """With ``blind_seed`` the reference is the type-blind policy on the very users a rollout of
    that seed meets (common random numbers); without it, on users of its own."""
    world = load_world("random:3")
    dyn = Dynamics(world)
    population = Population(world, 50)
    for i in range(50):
        a, b = population.user(77, i, prefix="q"), make_user(world, dyn, 77, i)
        assert (a.type.name, a.context, a.ts) == (b.type.name, b.context, b.ts)
    paired = reference_table(world, 400, 5, blind_seed=77)["type_blind"]
    own = reference_table(world, 400, 5)["type_blind"]
    assert paired == TypeBlindReference(world).monte_carlo(400, 77)[0]
    assert own == TypeBlindReference(world).monte_carlo(400, 5 + 1_000_003)[0]
    assert paired != own


def test_reference_table_reuses_a_solver_of_the_same_world_only() -> None:
    """A caller that solved the world (a regret meter) hands its solver over: same table."""
    world = load_world("random:3")
    solver = ExactSolver(world)
    assert reference_table(world, 200, 5, solver=solver) == reference_table(world, 200, 5)
    with pytest.raises(NextstepError, match="stationary world"):
        reference_table(load_world("random:4"), 200, 5, solver=solver)
    with pytest.raises(NextstepError, match="stationary world"):
        reference_table(load_world("ladder_shift"), 200, 5, solver=solver)
