"""The live watch on a real app and SQLite store: calibration moves when outcomes contradict the
model's predictions, offers are counted by exploration, outcome delays are observed, and an
outcome finds its decision after a restart (through the store)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.service.helpers import decide, fake_factory

PROBS = {"read_intro": 0.9, "watch_clip": 0.1}  # greedy offers read_intro to a new user


def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (name, sorted labels)."""
    r = client.get("/metrics")
    assert r.status_code == 200
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(client: TestClient, name: str, **labels: str) -> float | None:
    return samples(client).get((name, tuple(sorted(labels.items()))))


def _offer_and_resolve(
    client: TestClient, n: int, outcome: Callable[[int], str], *, prefix: str = "u"
) -> list[dict[str, Any]]:
    decisions = []
    for i in range(n):
        d = decide(client, f"{prefix}{i}", ts=1_000_000.0)
        assert d["step"] == "read_intro"
        decisions.append(d)
    for i, d in enumerate(decisions):
        r = client.post(
            "/v1/outcomes",
            json={"decision_id": d["decision_id"], "outcome": outcome(i), "ts": 1_000_600.0},
        )
        assert r.status_code == 201, r.text
    return decisions


def test_calibration_follows_outcomes_that_contradict_predictions(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(policy="greedy", decider_factory=fake_factory("3", PROBS), watch_window=40)
    labels = {"arm": "champion", "step": "read_intro"}
    # the model says 0.9; every user declines: observed 0 - predicted 0.9
    _offer_and_resolve(client, 30, lambda _i: "declined")
    assert value(client, "nextstep_calibration_offers", **labels) == 30
    assert abs(value(client, "nextstep_calibration_error", **labels) + 0.9) < 1e-9
    # now 30 of the next 30 accept: the window (40) holds 10 declines and 30 accepts
    _offer_and_resolve(client, 30, lambda _i: "accepted", prefix="v")
    assert value(client, "nextstep_calibration_offers", **labels) == 40
    assert abs(value(client, "nextstep_calibration_error", **labels) - (30 / 40 - 0.9)) < 1e-9
    # each offer's outcome came 600 s after it
    assert value(client, "nextstep_outcome_delay_seconds_count", arm="champion") == 60
    assert value(client, "nextstep_outcome_delay_seconds_sum", arm="champion") == 60 * 600.0
    assert value(client, "nextstep_outcome_delay_seconds_bucket", arm="champion", le="300.0") == 0
    assert value(client, "nextstep_outcome_delay_seconds_bucket", arm="champion", le="900.0") == 60
    # the threshold the shipped alert compares with
    assert value(client, "nextstep_calibration_threshold") == 0.10


def test_a_repeated_outcome_counts_once(make_client: Callable[..., TestClient]) -> None:
    client = make_client(policy="greedy", decider_factory=fake_factory("3", PROBS))
    d = decide(client, "u1")
    for _ in range(3):
        body = {"decision_id": d["decision_id"], "outcome": "accepted"}
        assert client.post("/v1/outcomes", json=body).status_code == 201
    assert value(client, "nextstep_calibration_offers", arm="champion", step="read_intro") == 1


def test_outcome_after_a_restart_finds_its_decision_in_the_store(
    make_client: Callable[..., TestClient],
) -> None:
    first = make_client(policy="greedy", decider_factory=fake_factory("3", PROBS))
    ds = [decide(first, f"u{i}") for i in range(4)]
    second = make_client(policy="greedy", decider_factory=fake_factory("3", PROBS))
    for d in ds:
        body = {"decision_id": d["decision_id"], "outcome": "accepted"}
        assert second.post("/v1/outcomes", json=body).status_code == 201
    labels = {"arm": "champion", "step": "read_intro"}
    assert value(second, "nextstep_calibration_offers", **labels) == 4
    assert abs(value(second, "nextstep_calibration_error", **labels) - 0.1) < 1e-9
    assert value(first, "nextstep_calibration_offers", **labels) is None


def test_batch_decisions_are_watched(make_client: Callable[..., TestClient]) -> None:
    client = make_client(policy="greedy", decider_factory=fake_factory("3", PROBS))
    reqs = [{"user_id": f"b{i}"} for i in range(5)]
    r = client.post("/v1/next-step:batch", json={"requests": reqs})
    assert r.status_code == 200
    answers = r.json()["responses"]
    assert value(client, "nextstep_offers_total", arm="champion", explored="false") == 5
    for a in answers:
        body = {"decision_id": a["decision_id"], "outcome": "declined"}
        assert client.post("/v1/outcomes", json=body).status_code == 201
    labels = {"arm": "champion", "step": "read_intro"}
    assert value(client, "nextstep_calibration_offers", **labels) == 5


def test_organic_outcomes_and_models_without_predictions_leave_calibration_alone(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(policy="ladder")  # no model: p_accept is null
    d = decide(client, "u1", ts=1_000_000.0)
    assert d["p_accept"] is None
    body = {"decision_id": d["decision_id"], "outcome": "accepted", "ts": 1_000_000.0}
    assert client.post("/v1/outcomes", json=body).status_code == 201
    organic = {"user_id": "u2", "step": "read_intro", "outcome": "accepted"}
    assert client.post("/v1/outcomes", json=organic).status_code == 201
    s = samples(client)
    assert not [k for k in s if k[0] == "nextstep_calibration_error"]
    assert value(client, "nextstep_outcome_delay_seconds_count", arm="champion") == 1
    assert value(client, "nextstep_outcome_delay_seconds_sum", arm="champion") == 0


REFERENCE = {
    "columns": {
        "channel": {"kind": "category", "values": ["web", "app"], "shares": [0.5, 0.5, 0, 0]},
        "age": {"kind": "numeric", "edges": [30.0], "shares": [0.5, 0.5, 0.0]},
    }
}


class _Bundle:
    def __init__(self) -> None:
        self.meta = {"context_reference": REFERENCE}


def _factory_with_reference() -> Callable[..., Any]:
    base = fake_factory("3", PROBS)

    def factory(catalog: Any, arm: Any) -> Any:
        decider = base(catalog, arm)
        decider.scorer.bundle = _Bundle()  # what a loaded ModelScorer carries
        return decider

    return factory


def test_context_drift_against_the_models_reference(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(
        policy="greedy", decider_factory=_factory_with_reference(), drift_window=100
    )
    for i in range(100):  # like training: half web, half app; half under 30
        ctx = {"channel": "web" if i % 2 else "app", "age": 20 if i % 4 < 2 else 40}
        decide(client, f"u{i}", context=ctx)
    assert value(client, "nextstep_context_drift_requests", arm="champion") == 100
    assert value(client, "nextstep_context_drift", arm="champion", key="channel") < 0.01
    assert value(client, "nextstep_context_drift", arm="champion", key="age") < 0.01
    for i in range(100):  # the window now holds only a new channel and old users
        decide(client, f"v{i}", context={"channel": "email", "age": 60})
    assert value(client, "nextstep_context_drift", arm="champion", key="channel") > 0.25
    assert value(client, "nextstep_context_drift", arm="champion", key="age") > 0.25


def test_a_failed_lookup_skips_the_watch_only() -> None:
    from prometheus_client import CollectorRegistry

    from service.watch import Watch

    w = Watch(CollectorRegistry())

    def broken(_decision_id: str) -> None:
        raise RuntimeError("store down")

    w.resolved("unknown", "accepted", 5.0, broken)  # logged, not raised
    w.resolved("unknown", "accepted", 5.0, lambda _d: ("champion", "s", 0.25, 1.0))
    assert w.calibration_offers.labels("champion", "s")._value.get() == 1
    assert w.calibration_error.labels("champion", "s")._value.get() == 0.75
