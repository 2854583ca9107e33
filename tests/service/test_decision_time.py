"""The request's ``ts`` is the decision's clock: the model is asked about that moment.

A scorer whose readiness depends on the time it is given (``FakeScorer`` ignores it) tells two
moments apart, so a handler that dropped ``ts`` and decided "now" would offer the other step."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from features.catalog import Catalog
from features.timeutil import parse_ts
from models.decide import Decider
from service.experiments import Arm

EARLY, LATE = "2025-03-04T10:11:12Z", "2025-06-01T08:00:00Z"
SWITCH = parse_ts("2025-04-01T00:00:00Z")  # the clip before this moment, the intro after


class ClockScorer:
    """Before ``SWITCH`` users are ready for ``watch_clip``, after it for ``read_intro``."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.seen: list[float] = []

    def p_accept(
        self, state: Any, candidates: Sequence[int], now: float, context: Mapping[str, Any]
    ) -> np.ndarray:
        self.seen.append(now)
        favoured = "watch_clip" if now < SWITCH else "read_intro"
        return np.asarray([0.9 if self.catalog.ids[i] == favoured else 0.2 for i in candidates])


def clock_factory() -> Callable[[Catalog, Arm], Decider]:
    def factory(catalog: Catalog, arm: Arm) -> Decider:
        return Decider(catalog, arm.policy, scorer=ClockScorer(catalog), model_version="t")

    return factory


def test_next_step_decides_at_the_requests_ts(make_client: Any) -> None:
    client: TestClient = make_client(policy="greedy", decider_factory=clock_factory())
    early = client.post("/v1/next-step", json={"user_id": "c1", "ts": EARLY}).json()
    late = client.post("/v1/next-step", json={"user_id": "c2", "ts": LATE}).json()
    assert (early["step"], late["step"]) == ("watch_clip", "read_intro")


def test_batch_decides_each_request_at_its_own_ts(make_client: Any) -> None:
    client: TestClient = make_client(policy="greedy", decider_factory=clock_factory())
    r = client.post(
        "/v1/next-step:batch",
        json={"requests": [{"user_id": "b1", "ts": EARLY}, {"user_id": "b2", "ts": LATE}]},
    )
    assert r.status_code == 200, r.text
    assert [d["step"] for d in r.json()["responses"]] == ["watch_clip", "read_intro"]


def test_user_readiness_is_computed_at_the_given_ts(make_client: Any) -> None:
    client: TestClient = make_client(policy="greedy", decider_factory=clock_factory())
    early = client.get("/v1/users/r1", params={"ts": EARLY}).json()["eligible"]
    late = client.get("/v1/users/r1", params={"ts": LATE}).json()["eligible"]
    assert early["watch_clip"] > early["read_intro"]
    assert late["read_intro"] > late["watch_clip"]
