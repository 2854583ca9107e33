"""Simulated users against a live service in event-time order, the way real traffic arrives.

``simulation.rollout.run_users`` walks each user to the end before the next one starts, so the
store it fills holds every user's whole future at once: after a few hundred users, the newest
event in the store lies weeks after the newest arrival (slow users come back days later). A
learner that measures its data window back from the newest event (``nextstep learn --window``)
would then train on the late visits of users who arrived long ago. ``LiveTraffic`` instead
makes every offer at its simulated time across all users in flight: after ``advance(stop)`` the
service has seen exactly what it would have by the arrival of user ``stop`` of the population,
and the users still in flight carry on in the next call, whatever model serves them by then.

Users come from ``simulation.simulate.Population``, so a world with a shift changes its users at
the same arrival position as in ``simulate`` and ``rollout``.
"""

from __future__ import annotations

import heapq
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from features.errors import NextstepError
from simulation.simulate import Population, SimUser
from simulation.worlds import World


class Client(Protocol):
    """What ``LiveTraffic`` needs of an HTTP client (``httpx.Client``, FastAPI's TestClient)."""

    def post(self, url: str, *, json: Any) -> Any: ...


@dataclass
class TrafficCounts:
    """What one ``advance`` or ``drain`` did: requests, failures and the models that answered."""

    decisions: int = 0
    offers: int = 0
    errors: int = 0  # non-2xx answers (the user stops there)
    server_errors: int = 0  # of which 5xx
    invalid: int = 0  # a step the user could not take (the user stops there)
    finished: int = 0  # users whose walk ended in this call
    model_versions: dict[str, int] = field(default_factory=dict)


@dataclass
class _Walk:
    user: SimUser
    position: int
    versions: set[str] = field(default_factory=set)


class LiveTraffic:
    """The ``users`` users of ``world`` (seeded) against ``client``, in event-time order."""

    def __init__(
        self,
        world: World,
        users: int,
        seed: int,
        client: Client,
        *,
        prefix: str = "live",
        concurrency: int = 4,
        first: int = 0,
    ) -> None:
        """``first``: the first user to arrive (earlier ones came before the service did)."""
        if concurrency < 1:
            raise NextstepError(f"concurrency must be >= 1, got {concurrency}")
        if not 0 <= first <= users:
            raise NextstepError(f"first must be in [0, {users}], got {first}")
        self.world = world
        self.population = Population(world, users)
        self.seed = seed
        self.client = client
        self.prefix = prefix
        self.concurrency = concurrency
        self.admitted = first  # positions below this have arrived (or never will)
        self._heap: list[tuple[float, int, _Walk]] = []
        self.rewards: dict[int, float] = {}  # position -> goal worth reached (finished users)
        self.served_by: dict[int, set[str]] = {}  # position -> model versions that served it
        self.now = -math.inf  # the simulated time of the last offer made

    def arrival(self, position: int) -> float:
        return float(self.population.user(self.seed, position, self.prefix).ts)

    def advance(self, stop: int) -> TrafficCounts:
        """Admit the users at positions below ``stop`` and make every offer due before the
        arrival of user ``stop`` (all offers of the admitted users when ``stop`` is the
        population's size)."""
        if not self.admitted <= stop <= self.population.users:
            raise NextstepError(
                f"advance: stop must be in [{self.admitted}, {self.population.users}], got {stop}"
            )
        horizon = self.arrival(stop) if stop < self.population.users else math.inf
        for i in range(self.admitted, stop):
            u = self.population.user(self.seed, i, self.prefix)
            heapq.heappush(self._heap, (u.ts, i, _Walk(u, i)))
        self.admitted = stop
        return self._run(horizon)

    def drain(self) -> TrafficCounts:
        """Finish every admitted user's walk (no new arrivals)."""
        return self._run(math.inf)

    @property
    def in_flight(self) -> int:
        return len(self._heap)

    def conversion(self, positions: range) -> tuple[float, float, int]:
        """Mean goal worth (conversion), its standard error and the count, over the finished
        users at ``positions``."""
        r = np.asarray([self.rewards[i] for i in positions if i in self.rewards], dtype=float)
        if len(r) < 2:
            return (float(r.mean()) if len(r) else math.nan), math.nan, len(r)
        return float(r.mean()), float(r.std(ddof=1) / math.sqrt(len(r))), len(r)

    # -- the event loop ----------------------------------------------------------------------
    def _run(self, horizon: float) -> TrafficCounts:
        counts = TrafficCounts()
        with ThreadPoolExecutor(self.concurrency) as pool:
            while self._heap and self._heap[0][0] < horizon:
                batch = [
                    heapq.heappop(self._heap)[2]
                    for _ in range(min(self.concurrency, len(self._heap)))
                    if self._heap[0][0] < horizon
                ]
                self.now = max(self.now, max(w.user.ts for w in batch))
                for walk, alive in zip(batch, pool.map(self._offer, batch), strict=True):
                    self._account(walk, alive, counts)
        return counts

    def _account(self, walk: _Walk, result: tuple[bool, dict[str, Any]], c: TrafficCounts) -> None:
        alive, facts = result
        c.decisions += facts.get("decisions", 0)
        c.offers += facts.get("offers", 0)
        c.errors += facts.get("errors", 0)
        c.server_errors += facts.get("server_errors", 0)
        c.invalid += facts.get("invalid", 0)
        version = facts.get("version")
        if version is not None:
            walk.versions.add(version)
            c.model_versions[version] = c.model_versions.get(version, 0) + 1
        if alive:
            heapq.heappush(self._heap, (walk.user.ts, walk.position, walk))
        else:
            c.finished += 1
            self.rewards[walk.position] = walk.user.reward
            self.served_by[walk.position] = walk.versions

    def _offer(self, walk: _Walk) -> tuple[bool, dict[str, Any]]:
        """One visit of one user: next-step, the user's answer, its outcome. Returns whether
        the user comes back, and what happened."""
        u = walk.user
        catalog = self.world.catalog
        body = {"user_id": u.user_id, "context": u.context, "ts": _iso(u.ts)}
        r = self.client.post("/v1/next-step", json=body)
        if r.status_code != 200:
            return False, {"decisions": 1, "errors": 1, "server_errors": int(r.status_code >= 500)}
        d = r.json()
        facts: dict[str, Any] = {"decisions": 1, "version": str(d.get("model_version"))}
        if d.get("step") is None:
            return False, facts
        step = catalog.index.get(d["step"])
        if step is None or step not in catalog.eligible_indices(
            u.state[0], catalog.available(u.context)
        ):
            facts["invalid"] = 1
            return False, facts
        outcome = u.respond(step)
        facts["offers"] = 1
        r = self.client.post(
            "/v1/outcomes",
            json={"decision_id": d["decision_id"], "outcome": outcome, "ts": _iso(u.ts)},
        )
        if r.status_code != 201:
            facts.update(errors=1, server_errors=int(r.status_code >= 500))
            return False, facts
        if u.done:
            return False, facts
        u.advance_clock()
        return True, facts


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
