"""LiveTraffic: simulated users in event-time order against a service, so the service's store
never holds a user's future; the users and their answers are those of ``run_users``."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from features.errors import NextstepError
from models.baselines import ladder_choice
from models.decide import Decider
from models.policies import PolicyConfig
from simulation.rollout import InProcess, run_users
from simulation.traffic import LiveTraffic
from simulation.worlds import World, load_world


class _Answer:
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status_code = status
        self._body = body

    def json(self) -> dict[str, Any]:
        return self._body


class LadderService:
    """A stand-in service: the ladder rule over the steps each user accepted, every request's
    time recorded (``fail_every``: every n-th decision answers 503)."""

    def __init__(self, world: World, fail_every: int = 0) -> None:
        self.catalog = world.catalog
        self.accepted: dict[str, int] = {}
        self.pending: dict[str, tuple[str, int]] = {}
        self.times: list[str] = []
        self.fail_every = fail_every
        self.ids = itertools.count()

    def post(self, url: str, *, json: Any) -> _Answer:
        self.times.append(json["ts"])
        if url == "/v1/next-step":
            n = next(self.ids)
            if self.fail_every and n % self.fail_every == self.fail_every - 1:
                return _Answer(503, {})
            mask = self.accepted.get(json["user_id"], 0)
            eligible = self.catalog.eligible_indices(mask)
            if not eligible:
                return _Answer(200, {"step": None, "model_version": None})
            step = ladder_choice(self.catalog, eligible)
            self.pending[f"d{n}"] = (json["user_id"], step)
            return _Answer(
                200, {"step": self.catalog.ids[step], "decision_id": f"d{n}", "model_version": "1"}
            )
        user, step = self.pending.pop(json["decision_id"])
        if json["outcome"] == "accepted":
            self.accepted[user] = self.accepted.get(user, 0) | 1 << step
        return _Answer(201, {})


@pytest.mark.parametrize("name", ["ladder", "ladder_shift"])
def test_users_and_answers_are_those_of_run_users(name: str) -> None:
    world = load_world(name)
    service = LadderService(world)
    traffic = LiveTraffic(world, 300, 4, service, concurrency=1)
    assert traffic.advance(150).finished < 150 < traffic.in_flight + 150
    traffic.advance(300)  # the last arrival: every walk runs to its end
    assert traffic.in_flight == 0 and traffic.drain().decisions == 0
    mean, _se, n = traffic.conversion(range(300))
    ladder = Decider(world.catalog, PolicyConfig.parse("ladder"))
    walked = run_users(world, 300, 4, InProcess(world, ladder), prefix="live")
    assert n == 300 and mean == pytest.approx(walked.conversion)


def test_the_service_never_sees_the_future_of_a_user() -> None:
    """After ``advance(stop)`` every request was made before user ``stop`` arrived, and offers
    go out in time order across users (one at a time here)."""
    world = load_world("ladder_shift")
    service = LadderService(world)
    traffic = LiveTraffic(world, 400, 9, service, concurrency=1)
    traffic.advance(200)
    horizon = traffic.arrival(200)
    from datetime import datetime

    stamps = [datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() for t in service.times]
    assert max(stamps) < horizon
    assert stamps == sorted(stamps)
    assert traffic.in_flight > 0  # slow users are still coming back
    before = traffic.in_flight
    traffic.advance(400)
    traffic.drain()
    assert traffic.in_flight == 0 and len(traffic.rewards) == 400 and before < 200


def test_failures_are_counted_and_stop_the_user() -> None:
    world = load_world("ladder")
    traffic = LiveTraffic(world, 100, 2, LadderService(world, fail_every=7), concurrency=3)
    counts = traffic.advance(100)
    rest = traffic.drain()
    errors = counts.errors + rest.errors
    assert errors > 0 and errors == counts.server_errors + rest.server_errors
    assert len(traffic.rewards) == 100
    with pytest.raises(NextstepError, match="stop must be in"):
        traffic.advance(50)
    late = LiveTraffic(world, 100, 2, LadderService(world), first=60)
    late.advance(100)
    assert sorted(late.rewards) == list(range(60, 100))  # the first 60 never arrived
