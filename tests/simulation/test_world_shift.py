"""Non-stationary worlds (``shift:``): users change at a fraction of the run in arrival order,
the same in simulated logs, Monte Carlo and rollouts; the world after the shift is solved
exactly like any other; a misspelt shift key, step or type is refused."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from features.errors import InputError, NextstepError
from models.decide import Decider
from models.policies import PolicyConfig
from simulation.compare import CompareError, check_world_catalog
from simulation.rollout import InProcess, run_users
from simulation.simulate import (
    FIXED_POLICIES,
    START,
    ExactSolver,
    Population,
    exact_table,
    generate_log,
    monte_carlo,
    write_simulation,
)
from simulation.worlds import BUILTIN, STATIONARY, load_world


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "moving.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _with_shift(shift: Any) -> dict[str, Any]:
    data = copy.deepcopy(BUILTIN["ladder"])
    data["shift"] = shift
    return data


def _accept_rate(cols: dict[str, list], step: str, users: set[str]) -> tuple[float, int]:
    hits = [
        o == "accepted"
        for u, s, o in zip(cols["user_id"], cols["step"], cols["outcome"], strict=True)
        if s == step and u in users
    ]
    return float(np.mean(hits)), len(hits)


def test_shifted_simulation_is_reproducible_and_seed_dependent(tmp_path: Path) -> None:
    world = load_world("ladder_shift")
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_simulation(world, 300, seed, tmp_path / name)
    digest = {
        n: hashlib.sha256((tmp_path / n / "events.csv").read_bytes()).hexdigest() for n in "abc"
    }
    assert digest["a"] == digest["b"] != digest["c"]


def test_arrival_order_is_time_order_so_halfway_is_the_same_in_both() -> None:
    world = load_world("ladder_shift")
    population = Population(world, 400)
    arrivals = [population.user(7, i).ts for i in range(400)]
    assert arrivals == sorted(arrivals)
    assert population.first_shifted == 200
    assert [population.shifted(i) for i in (0, 199, 200, 399)] == [False, False, True, True]
    # every shifted user arrives after every unshifted one: an event-time window sees the shift
    assert max(arrivals[:200]) < min(arrivals[200:])


def test_readiness_shift_moves_the_step_for_later_users_only() -> None:
    """ladder_shift: +2 logit on purchase for everyone after half the users. The logged accept
    rate of the purchase rises by far more than its sampling noise; other steps' rates stay
    within noise (their offers' states differ a little, so the bound is loose, not zero)."""
    users = 3000
    world = load_world("ladder_shift")
    cols = generate_log(world, users, 11, with_truth=True)
    ids = sorted(set(cols["user_id"]))
    early, late = set(ids[: users // 2]), set(ids[users // 2 :])
    pre, n_pre = _accept_rate(cols, "purchase", early)
    post, n_post = _accept_rate(cols, "purchase", late)
    se = (pre * (1 - pre) / n_pre + post * (1 - post) / n_post) ** 0.5
    assert n_pre > 300 and n_post > 300
    assert post - pre > 0.2 and post - pre > 8 * se, (pre, post, se)
    for step in ("read_intro", "watch_clip", "take_quiz", "create_account", "start_trial"):
        a, na = _accept_rate(cols, step, early)
        b, nb = _accept_rate(cols, step, late)
        assert abs(b - a) < 4 * (a * (1 - a) / na + b * (1 - b) / nb) ** 0.5 + 0.03, step
    # the truth column is the shifted world's: the true P(accept) of the purchase jumps too
    truth = [
        (u in late, p)
        for u, s, p in zip(cols["user_id"], cols["step"], cols["true_p_accept"], strict=True)
        if s == "purchase"
    ]
    assert np.mean([p for lt, p in truth if lt]) > np.mean([p for lt, p in truth if not lt]) + 0.2


def test_mix_shift_changes_the_types_of_later_users_only() -> None:
    users = 4000
    world = load_world("ladder_mixshift")
    cols = generate_log(world, users, 5, with_truth=True)
    first_type: dict[str, str] = {}
    for u, t in zip(cols["user_id"], cols["user_type"], strict=True):
        first_type.setdefault(u, t)
    ids = sorted(first_type)
    half = users // 2
    for users_of, weights in (
        (ids[:half], {t["name"]: t["weight"] for t in BUILTIN["ladder"]["types"]}),
        (ids[half:], BUILTIN["ladder_mixshift"]["shift"]["weights"]),
    ):
        total = sum(weights.values())
        for name, w in weights.items():
            p = w / total
            share = sum(first_type[u] == name for u in users_of) / len(users_of)
            assert abs(share - p) < 4 * (p * (1 - p) / len(users_of)) ** 0.5, (name, share, p)


def test_monte_carlo_of_each_half_agrees_with_its_exact_world() -> None:
    """Population users before the shift follow ``before_shift()``, after it ``after_shift()``:
    Monte Carlo of each half meets that world's exact value."""
    world = load_world("ladder_shift")
    users = 6000
    population = Population(world, users)
    policy = FIXED_POLICIES["ladder"]
    table = exact_table(world)
    values = {False: [], True: []}
    for i in range(users):
        u = population.user(21, i)
        while not u.done:
            eligible = world.catalog.eligible_indices(u.state[0], u.available)
            if not eligible:
                break
            u.respond(policy(world.catalog, u.state, eligible)[0][0])
        values[population.shifted(i)].append(u.reward)
    for post, exact in ((False, table["ladder"]), (True, table["after_shift"]["ladder"])):
        v = np.asarray(values[post])
        se = v.std(ddof=1) / len(v) ** 0.5
        assert abs(v.mean() - exact["overall"]) < 3 * se, (post, v.mean(), exact)
    assert table["after_shift"]["ladder"]["overall"] != table["ladder"]["overall"]
    # monte_carlo walks the same population: half of each world
    mean, se = monte_carlo(world, policy, users, 21)
    mixed = (table["ladder"]["overall"] + table["after_shift"]["ladder"]["overall"]) / 2
    assert abs(mean - mixed) < 3 * se


def test_the_post_shift_optimum_differs_and_so_does_its_best_action() -> None:
    world = load_world("ladder_shift")
    before = ExactSolver(world.before_shift())
    after = ExactSolver(world.after_shift())
    b, a = before.table(), after.table()
    assert a["optimum"]["overall"] > b["optimum"]["overall"] + 0.05  # buying got easier
    changed = []
    for tb, ta in zip(before.world.types, after.world.types, strict=True):
        qb, qa = before.q_optimal(tb, START), after.q_optimal(ta, START)
        changed.append(max(qb, key=qb.get) != max(qa, key=qa.get))
    assert any(changed)  # some type's best first step is now a different one
    best = {
        k: max(FIXED_POLICIES, key=lambda p: tab[p]["overall"]) for k, tab in (("b", b), ("a", a))
    }
    assert best == {"b": "ladder", "a": "big_ask"}
    mix = load_world("ladder_mixshift")
    mb, ma = exact_table(mix), exact_table(mix)["after_shift"]
    best = {
        k: max(FIXED_POLICIES, key=lambda p: tab[p]["overall"]) for k, tab in (("b", mb), ("a", ma))
    }
    assert best == {"b": "ladder", "a": "big_ask"}  # the best fixed policy flips with the mix


def test_exact_solver_and_compare_refuse_a_world_that_shifts() -> None:
    world = load_world("ladder_shift")
    with pytest.raises(NextstepError, match="before_shift"):
        ExactSolver(world)
    with pytest.raises(CompareError, match="shift"):
        check_world_catalog(world, world.catalog)


def test_rollout_applies_the_shift_by_arrival_and_runs_slices() -> None:
    world = load_world("ladder_shift")
    decider = Decider(world.catalog, PolicyConfig.parse("ladder"))
    whole = run_users(world, 600, 2, InProcess(world, decider))
    first = run_users(world, 600, 2, InProcess(world, decider), only=range(0, 300))
    second = run_users(world, 600, 2, InProcess(world, decider), only=range(300, 600))
    assert first.users == second.users == 300
    # the slices are the same users as the whole run, in two pieces
    assert whole.conversion == pytest.approx((first.conversion + second.conversion) / 2)
    table = exact_table(world)
    for res, exact in ((first, table["ladder"]), (second, table["after_shift"]["ladder"])):
        assert abs(res.conversion - exact["overall"]) < 3 * res.se + 1e-9
    with pytest.raises(NextstepError, match="contiguous slice"):
        run_users(world, 600, 2, InProcess(world, decider), only=range(500, 700))


def test_stationary_worlds_are_drawn_exactly_as_before_a_shift_existed() -> None:
    """A world without a shift draws its users as ``make_user`` always did (no reordering)."""
    for name in STATIONARY:
        world = load_world(name)
        assert world.shift is None and world.after_shift() is world
    population = Population(load_world("ladder"), 100)
    arrivals = [population.user(1, i).ts for i in range(100)]
    assert arrivals != sorted(arrivals)


def test_a_world_file_with_a_shift_for_named_types(tmp_path: Path) -> None:
    data = _with_shift({"at": 0.25, "readiness": {"take_quiz": -3}, "types": ["browser"]})
    world = load_world(str(_write(tmp_path, data)))
    assert world.shift is not None and world.shift.first_shifted(100) == 25
    after = {t.name: t for t in world.after_shift().types}
    assert after["browser"].appeal == {"take_quiz": -3.0}
    assert after["hesitant"].appeal == {} and after["eager"].appeal == {}
    assert [t.weight for t in world.after_shift().types] == [t.weight for t in world.types]


@pytest.mark.parametrize(
    ("shift", "message"),
    [
        ({"at": 0.5, "readines": {"start_trial": 1}}, r"did you mean 'readiness'\?"),
        ({"att": 0.5, "readiness": {"start_trial": 1}}, r"did you mean 'at'\?"),
        ({"at": 0.5, "readiness": {"start_trail": 1}}, r"unknown step 'start_trail'; did you"),
        (
            {"at": 0.5, "readiness": {"start_trial": 1}, "types": ["hesitent"]},
            r"unknown type 'hesitent'; did you mean 'hesitant'\?",
        ),
        ({"at": 1.5, "readiness": {"start_trial": 1}}, r"shift.at must be in \(0, 1\)"),
        ({"at": 0.5}, r"needs 'readiness' or 'weights'"),
        ({"readiness": {"start_trial": 1}}, r"needs 'at'"),
        ({"at": 0.5, "readiness": {"start_trial": "lots"}}, r"finite number"),
        ({"at": 0.5, "weights": {"hesitant": 1, "eager": 1}}, r"missing: browser"),
        ({"at": 0.5, "weights": {"hesitant": 0, "eager": 0, "browser": 0}}, r"not all 0"),
        ("soon", r"shift must be a mapping"),
    ],
)
def test_a_bad_shift_is_refused_with_a_clear_message(
    tmp_path: Path, shift: Any, message: str
) -> None:
    path = _write(tmp_path, _with_shift(shift))
    with pytest.raises(InputError, match=message) as info:
        load_world(str(path))
    assert str(path) in str(info.value)


def test_a_misspelt_step_in_a_type_appeal_is_refused(tmp_path: Path) -> None:
    data = copy.deepcopy(BUILTIN["ladder"])
    data["types"][0]["appeal"] = {"purchas": 1.0}
    with pytest.raises(InputError, match=r"type 'hesitant': appeal: unknown step 'purchas'"):
        load_world(str(_write(tmp_path, data)))


def test_a_phase_of_a_shifting_world_is_named_with_a_suffix() -> None:
    after = load_world("ladder_shift:after_shift")
    assert after.shift is None and after == load_world("ladder_shift").after_shift()
    assert load_world("ladder_mixshift:before_shift").types == load_world("ladder").types
    with pytest.raises(InputError, match="has no shift"):
        load_world("ladder:after_shift")


def test_simulate_cli_exact_table_has_the_world_after_the_shift(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    ns = str(Path(sys.executable).with_name("nextstep"))
    out = subprocess.run(
        [
            ns,
            "simulate",
            "--world",
            "ladder_shift",
            "--users",
            "40",
            "--seed",
            "1",
            "--out",
            str(tmp_path / "sim"),
            "--exact",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    table = json.loads(out.stdout)
    assert table["after_shift"]["optimum"]["overall"] > table["optimum"]["overall"]
    assert (tmp_path / "sim" / "events.csv").exists()
    bad = _write(tmp_path, _with_shift({"at": 0.5, "readiness": {"start_trail": 1}}))
    res = subprocess.run(
        [
            ns,
            "simulate",
            "--world",
            str(bad),
            "--users",
            "5",
            "--seed",
            "1",
            "--out",
            str(tmp_path / "bad"),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "start_trail" in res.stderr and "Traceback" not in res.stderr
