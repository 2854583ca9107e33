"""Experiments: YAML arms, validation, sticky salted assignment, weights, logging of arms."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from service.experiments import ExperimentError, load_experiment, parse_experiment
from tests.service.helpers import decide

EXP = {
    "name": "ab",
    "salt": "s1",
    "arms": [
        {"name": "control", "policy": "ladder", "weight": 3},
        {"name": "bold", "policy": "big_ask", "weight": 1},
        {
            "name": "explore",
            "policy": "ladder",
            "exploration": {"kind": "epsilon", "value": 0.2},
            "weight": 0,
        },
    ],
}


@pytest.fixture
def exp_path(tmp_path: Path) -> Path:
    p = tmp_path / "experiments.yaml"
    p.write_text(yaml.safe_dump(EXP), encoding="utf-8")
    return p


def test_parse_and_assign_weights(exp_path: Path) -> None:
    exp = load_experiment(exp_path, default_policy="planner")
    assert [a.name for a in exp.arms] == ["control", "bold", "explore"]
    assert exp.arms[2].exploration == {"kind": "epsilon", "value": 0.2}
    counts = Counter(exp.assign(f"user-{i}").name for i in range(20_000))
    assert counts["explore"] == 0
    assert abs(counts["control"] / 20_000 - 0.75) < 0.02
    assert abs(counts["bold"] / 20_000 - 0.25) < 0.02
    # sticky: the same user always lands in the same arm; another salt reshuffles
    assert all(exp.assign(f"user-{i}") == exp.assign(f"user-{i}") for i in range(100))
    other = parse_experiment({**EXP, "salt": "s2"}, source="x", default_policy="planner")
    moved = sum(exp.assign(f"user-{i}").name != other.assign(f"user-{i}").name for i in range(2000))
    assert moved > 300


def test_default_is_one_champion_arm() -> None:
    exp = load_experiment(None, default_policy="greedy+softmax=0.1")
    assert len(exp.arms) == 1 and exp.arms[0].name == "champion"
    assert exp.arms[0].policy.name == "greedy" and exp.arms[0].policy.exploration == "softmax"


BAD = [
    ({"arms": []}, "at least one arm"),
    ({"arms": [{"name": "a"}, {"name": "a"}]}, "unique"),
    ({"arms": [{"name": "a", "weight": 0}]}, "sum to more than 0"),
    ({"arms": [{"name": "a", "weight": -1}]}, ">= 0"),
    ({"arms": [{"name": "a", "weight": "x"}]}, "number"),
    ({"arms": [{"name": "a", "policy": "oracle"}]}, "unknown policy"),
    ({"arms": [{"name": "a", "exploration": {"kind": "boltzmann", "value": 1}}]}, "exploration"),
    ({"arms": [{"name": "a", "exploration": {"kind": "epsilon", "value": 2}}]}, "epsilon"),
    ({"arms": [{"policy": "ladder"}]}, "name"),
    ({"arms": "nope"}, "list 'arms'"),
    ({"arms": [{"name": "a", "shadow": True}]}, "unknown key"),
    ({"arms": [{"name": "a", "wieght": 0.5}]}, r"unknown key 'wieght'; did you mean 'weight'\?"),
    ({"arms": [{"name": "a", "polcy": "greedy"}]}, r"did you mean 'policy'\?"),
    ({"name": "ab", "salts": "x", "arms": [{"name": "a"}]}, r"'salts'; did you mean 'salt'\?"),
    ({"arms": [{"name": "a"}], "owner": "me"}, r"unknown key 'owner' \(known: arms, name, salt\)"),
    ({"arms": [{"name": "a"}, {"name": "s", "shadow_of": "nope"}]}, "not a served arm"),
    ({"arms": [{"name": "s", "shadow_of": "s"}]}, "at least one served arm"),
    ("just text", "list 'arms'"),
]


@pytest.mark.parametrize(("data", "message"), BAD)
def test_bad_experiments_are_refused_with_a_message(data: object, message: str) -> None:
    with pytest.raises(ExperimentError, match=message):
        parse_experiment(data, source="exp.yaml", default_policy="planner")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ExperimentError, match="cannot read"):
        load_experiment(tmp_path / "missing.yaml", default_policy="planner")
    bad = tmp_path / "bad.yaml"
    bad.write_text("arms: [", encoding="utf-8")
    with pytest.raises(ExperimentError, match="not valid YAML") as info:
        load_experiment(bad, default_policy="planner")
    assert "\n" not in str(info.value)
    assert "line 1, column" in str(info.value)


def test_service_splits_traffic_and_logs_arms(
    make_client: Callable[..., TestClient], exp_path: Path
) -> None:
    client = make_client(experiments=exp_path)
    exp = client.get("/v1/experiments").json()
    assert exp["name"] == "ab"
    assert [(a["name"], a["policy"], a["weight"]) for a in exp["arms"]] == [
        ("control", "ladder", 0.75),
        ("bold", "big_ask", 0.25),
        ("explore", "ladder", 0.0),
    ]
    arms = Counter()
    for i in range(200):
        d = decide(client, f"x{i}")
        again = decide(client, f"x{i}")
        assert again["arm"] == d["arm"]  # sticky
        arms[d["arm"]] += 1
        assert d["policy"] == {"control": "ladder", "bold": "big_ask"}[d["arm"]]
        if d["arm"] == "bold":
            assert d["step"] == "read_intro"  # cheapest step toward a goal
    assert 110 < arms["control"] < 190 and arms["bold"] > 10
    store = client.app.state.store
    with store.read() as conn:
        rows = conn.exec_driver_sql(
            "SELECT arm, policy, COUNT(*) FROM decisions GROUP BY arm, policy"
        )
        logged = {(a, p): n for a, p, n in rows}
    assert logged == {
        ("control", "ladder"): 2 * arms["control"],
        ("bold", "big_ask"): 2 * arms["bold"],
    }
    view = client.get("/v1/users/x1").json()
    assert view["arm"] in ("control", "bold")


def test_a_broken_experiments_file_stops_start_up(
    make_settings: Callable[..., object], tmp_path: Path
) -> None:
    from service.app import create_app

    bad = tmp_path / "bad.yaml"
    bad.write_text("arms: [{name: a, weight: -1}]", encoding="utf-8")
    with pytest.raises(ExperimentError), TestClient(create_app(make_settings(experiments=bad))):
        pass


def test_shadow_arm_decides_beside_the_served_arm_and_is_never_served(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    from features.catalog import Catalog
    from loop.export import read_shadows, read_store
    from loop.report import build_shadow_reports

    exp = {
        "name": "shadowed",
        "arms": [
            {"name": "champion", "policy": "ladder"},
            {"name": "bold-shadow", "policy": "big_ask", "shadow_of": "champion", "weight": 5},
        ],
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp), encoding="utf-8")
    client = make_client(experiments=path)
    arms = {a["name"]: a for a in client.get("/v1/experiments").json()["arms"]}
    assert arms["bold-shadow"]["shadow_of"] == "champion" and arms["bold-shadow"]["weight"] == 0
    served = []
    for i in range(30):
        d = decide(client, f"s{i}")
        assert d["arm"] == "champion" and d["policy"] == "ladder"  # the shadow is never served
        served.append(d)
    client.post(
        "/v1/outcomes", json={"decision_id": served[0]["decision_id"], "outcome": "accepted"}
    )
    batch = client.post(
        "/v1/next-step:batch", json={"requests": [{"user_id": f"b{i}"} for i in range(5)]}
    )
    assert batch.status_code == 200
    store = client.app.state.store
    with store.read() as conn:
        n = conn.exec_driver_sql("SELECT COUNT(*) FROM shadow_decisions").scalar()
    assert n == 35  # one shadow row per served decision (single and batch)
    url = str(store.engine.url.render_as_string(hide_password=False))
    dec, out = read_store(url)
    shadows = read_shadows(url)
    assert set(shadows["arm"]) == {"bold-shadow"}
    cat = Catalog.from_data(client.get("/v1/steps").json()["steps"])
    assert cat.n > 0
    (rep,) = build_shadow_reports(dec, out, shadows, n_boot=50)
    # ladder and big_ask agree exactly when the cheapest step is also the first toward a goal
    expected = sum(
        s == d
        for s, d in zip(
            shadows.set_index("decision_id").loc[dec["decision_id"], "step"],
            dec["step"],
            strict=True,
        )
    ) / len(dec)
    assert rep.decisions == 35 and rep.shadow_of == "champion"
    assert rep.agreement == pytest.approx(expected)
    assert 0.0 <= rep.ipw_low <= rep.ipw_accept_rate <= rep.ipw_high
