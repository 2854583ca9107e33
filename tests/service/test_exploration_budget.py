"""The exploration budget (``NEXTSTEP_EXPLORATION``): on by default on the champion, with exact
propensities; a policy's own exploration wins; ``none`` switches it off."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from service.experiments import load_experiment, parse_exploration
from service.settings import Settings
from tests.service.helpers import fake_factory

PROBS = {"read_intro": 0.9, "watch_clip": 0.1}
DEFAULT = Settings.model_fields["exploration"].default


def _batch(client: TestClient, prefix: str, n: int) -> list[dict]:
    reqs = [{"user_id": f"{prefix}{i}", "ts": 1_000_000.0} for i in range(n)]
    r = client.post("/v1/next-step:batch", json={"requests": reqs})
    assert r.status_code == 200, r.text
    return r.json()["responses"]


def test_default_explores_about_epsilon_with_exact_propensities(
    make_client: Callable[..., TestClient],
) -> None:
    assert DEFAULT == "epsilon=0.05"
    eps = 0.05
    client = make_client(
        policy="greedy", decider_factory=fake_factory("3", PROBS), exploration=DEFAULT
    )
    answers = _batch(client, "a", 1000) + _batch(client, "b", 1000)
    explored = 0
    expected_share = 0.0
    for a in answers:
        n = len(a["candidates"])
        assert n >= 2
        if a["explored"]:
            explored += 1
            assert a["step"] != "read_intro"
            assert a["propensity"] == pytest.approx(eps / n, rel=1e-12)
        else:
            assert a["step"] == "read_intro"
            assert a["propensity"] == pytest.approx(1 - eps + eps / n, rel=1e-12)
        expected_share += eps * (n - 1) / n
    p = expected_share / len(answers)
    se = math.sqrt(p * (1 - p) / len(answers))
    assert abs(explored / len(answers) - p) < 4 * se
    # the experiments route says so
    arms = client.get("/v1/experiments").json()["arms"]
    assert arms[0]["exploration"] == {"kind": "epsilon", "value": 0.05}


def test_none_switches_it_off(make_client: Callable[..., TestClient]) -> None:
    client = make_client(policy="greedy", decider_factory=fake_factory("3", PROBS))
    answers = _batch(client, "a", 300)  # the fixture sets exploration "none"
    assert all(not a["explored"] and a["propensity"] == 1.0 for a in answers)


def test_the_policys_own_exploration_wins(make_client: Callable[..., TestClient]) -> None:
    client = make_client(
        policy="greedy+softmax=0.2", decider_factory=fake_factory("3", PROBS), exploration=DEFAULT
    )
    arms = client.get("/v1/experiments").json()["arms"]
    assert arms[0]["exploration"] == {"kind": "softmax", "value": 0.2}


def test_only_the_champion_arm_of_an_experiment_gets_it(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    arms = [
        {"name": "champion", "policy": "planner", "weight": 0.5},
        {"name": "greedy", "policy": "greedy", "weight": 0.5},
        {"name": "shadow", "policy": "planner", "shadow_of": "champion"},
    ]
    path.write_text(yaml.safe_dump({"arms": arms}), encoding="utf-8")
    exp = load_experiment(path, default_policy="planner", exploration=("epsilon", 0.1))
    by = {a.name: a for a in exp.arms}
    assert by["champion"].exploration == {"kind": "epsilon", "value": 0.1}
    assert by["greedy"].exploration is None
    assert by["shadow"].exploration is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("none", None),
        ("epsilon=0.05", ("epsilon", 0.05)),
        (" Softmax=0.5 ", ("softmax", 0.5)),
        ("epsilon=0", ("epsilon", 0.0)),
    ],
)
def test_parse(text: str, expected: tuple[str, float] | None) -> None:
    assert parse_exploration(text) == expected


@pytest.mark.parametrize("text", ["epsilon=1.5", "softmax=0", "epsilon", "greedy=0.1", "eps=x"])
def test_bad_values_are_refused_at_start_up(text: str) -> None:
    with pytest.raises(ValueError, match="exploration must be"):
        Settings(exploration=text)


def test_a_campaign_batch_draws_each_user_as_alone(
    make_client: Callable[..., TestClient], catalog_path: Path
) -> None:
    """First visits with one input share one computed decision; each user still gets their own
    seeded draw, exactly the decision they would get alone."""
    from features.catalog import load_catalog
    from features.state import UserState
    from models.decide import Decider
    from models.policies import PolicyConfig
    from tests.service.helpers import FakeScorer

    client = make_client(
        policy="greedy", decider_factory=fake_factory("3", PROBS), exploration="epsilon=0.4"
    )
    ctx = {"channel": "web"}
    reqs = [{"user_id": f"c{i}", "ts": 1_000_000.0, "context": ctx} for i in range(400)]
    r = client.post("/v1/next-step:batch", json={"requests": reqs})
    answers = r.json()["responses"]
    catalog = load_catalog(catalog_path)
    alone = Decider(
        catalog,
        PolicyConfig.parse("greedy+epsilon=0.4"),
        scorer=FakeScorer(catalog, PROBS),
        model_version="3",
    )
    explored = 0
    for req, a in zip(reqs, answers, strict=True):
        d = alone.decide(req["user_id"], UserState(), now=1_000_000.0, context=ctx)
        assert (a["step"], a["propensity"], a["explored"]) == (d.step, d.propensity, d.explored)
        assert a["p_accept"] == d.p_accept
        assert a["candidates"] == [
            {"step": c.step, "p_accept": c.p_accept, "score": c.score} for c in d.candidates
        ]
        explored += a["explored"]
    assert 40 < explored < 300  # both kinds of answers were compared
