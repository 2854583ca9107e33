"""Simulated users against a policy: in process, or over HTTP against a live service.

This is how nextstep proves a decision policy is good (and how a team tests its own
deployment): every simulated user follows the world's true dynamics, the policy only sees what a
real product would (context, outcomes, timing), and conversion is reported with its standard
error next to the world's exact optimum, the fixed baselines and the type-blind reference.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from features.errors import NextstepError
from features.state import UserState
from features.timeutil import iso_seconds
from models.decide import Decider
from models.policies import PolicyConfig
from simulation.regret import RegretMeter, UserRegret
from simulation.simulate import ExactSolver, Population, SimUser, TypeBlindReference
from simulation.worlds import World, load_world
from training.modelio import load_scorer


@dataclass
class RolloutResult:
    """Outcome of a rollout: conversion with its standard error, plus error accounting."""

    users: int
    conversion: float
    se: float
    offers: int
    invalid: int = 0
    errors: int = 0
    per_type: dict[str, float] = field(default_factory=dict)
    model_versions: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# A step chooser: (user, state) -> (step index or None, model_version or None)
Chooser = Callable[[SimUser, UserState], tuple[int | None, str | None]]


def run_users(
    world: World,
    users: int,
    seed: int,
    step_fn: Any,
    *,
    prefix: str = "r",
    only: range | None = None,
) -> RolloutResult:
    """Run ``users`` simulated users, each through ``step_fn`` (in-process or HTTP session).

    ``only`` runs just those arrival positions of the ``users`` (a test drives a live service
    through a world's shift in batches this way); the result counts the users it ran.
    """
    population = Population(world, users)
    positions = range(users) if only is None else only
    if positions.start < 0 or positions.stop > users or positions.step != 1:
        raise NextstepError(f"only must be a contiguous slice of range({users}), got {only}")
    users = len(positions)
    conv = np.zeros(users)
    types = [""] * users
    offers = invalid = errors = 0
    versions: dict[str, int] = {}
    lock = threading.Lock()

    def one(k: int) -> None:
        nonlocal offers, invalid, errors
        u = population.user(seed, positions[k], prefix=prefix)
        types[k] = u.type.name
        o, inv, err, vers = step_fn(u)
        conv[k] = u.reward
        with lock:
            offers += o
            invalid += inv
            errors += err
            for v in vers:
                versions[v] = versions.get(v, 0) + 1

    workers = getattr(step_fn, "concurrency", 1)
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(users)))
    else:
        for i in range(users):
            one(i)
    per_type = {
        t.name: float(conv[[k for k in range(users) if types[k] == t.name]].mean())
        for t in world.types
        if any(x == t.name for x in types)
    }
    return RolloutResult(
        users=users,
        conversion=float(conv.mean()),
        se=float(conv.std(ddof=1) / math.sqrt(users)) if users > 1 else 0.0,
        offers=offers,
        invalid=invalid,
        errors=errors,
        per_type=per_type,
        model_versions=versions,
    )


def walk_user(
    world: World,
    u: SimUser,
    choose: Callable[[UserState, SimUser], int | None],
    *,
    tracker: UserRegret | None = None,
) -> tuple[int, int]:
    """Walk one simulated user: ``choose`` sees only what a product would (the folded state,
    the user's context and clock) and names a step or None (offer nothing). Returns the
    offers made and whether the walk ended on an ineligible step (counted, never simulated).
    A ``tracker`` (``simulation.regret``) is told of every offer and of every answer the user
    came back from."""
    catalog = world.catalog
    state = UserState()
    offers = 0
    while not u.done:
        step = choose(state, u)
        if step is None:
            break
        if step not in catalog.eligible_indices(u.state[0], catalog.available(u.context)):
            return offers, 1
        outcome = _answer(u, step, tracker)
        offers += 1
        state.apply(catalog, step, outcome, u.ts, u.context)
        if u.done:
            break
        _next_visit(u, step, outcome, tracker)
    return offers, 0


def _answer(u: SimUser, step: int, tracker: UserRegret | None) -> str:
    """The user's answer to ``step``, charged to the tracker first."""
    if tracker is not None:
        tracker.charge(step)
    return u.respond(step)


def _next_visit(u: SimUser, step: int, outcome: str, tracker: UserRegret | None) -> None:
    """Advance to the user's next visit; the tracker learns the answer and how long it took."""
    answered = u.ts
    u.advance_clock()
    if tracker is not None:
        tracker.observe(step, outcome, (u.ts - answered) / 3600.0)


class Metered:
    """A rollout step function (``run_users``) walking each user with ``choose`` (a decider's,
    a peer's, a fixed rule's) and scoring every decision with ``meter``."""

    concurrency = 1

    def __init__(
        self,
        world: World,
        choose: Callable[[UserState, SimUser], int | None],
        meter: RegretMeter,
    ) -> None:
        self.world = world
        self.choose = choose
        self.meter = meter

    def __call__(self, u: SimUser) -> tuple[int, int, int, list[str]]:
        tracker = self.meter.start(u)
        offers, invalid = walk_user(self.world, u, self.choose, tracker=tracker)
        self.meter.finish(tracker)
        return offers, invalid, 0, []


class InProcess:
    """Walk one user through a ``Decider`` (no HTTP)."""

    concurrency = 1

    def __init__(self, world: World, decider: Decider) -> None:
        self.world = world
        self.decider = decider

    def choose(self, state: UserState, u: SimUser) -> int | None:
        """The decider's step for this user now (``walk_user``'s chooser)."""
        res = self.decider.decide(u.user_id, state, now=u.ts, context=u.context)
        return None if res.step is None else self.world.catalog.index[res.step]

    def __call__(self, u: SimUser) -> tuple[int, int, int, list[str]]:
        offers, invalid = walk_user(self.world, u, self.choose)
        return offers, invalid, 0, []


class OverHttp:
    """Walk one user through a live service: next-step, then the outcome, over HTTP."""

    def __init__(
        self,
        world: World,
        base: str,
        *,
        api_key: str | None = None,
        concurrency: int = 8,
        meter: RegretMeter | None = None,
    ) -> None:
        import httpx

        self.world = world
        self.concurrency = concurrency
        self.meter = meter
        headers = {"X-API-Key": api_key} if api_key else {}
        self.client = httpx.Client(
            base_url=base.rstrip("/"),
            headers=headers,
            timeout=30.0,
            limits=httpx.Limits(max_connections=concurrency * 2),
        )

    def __call__(self, u: SimUser) -> tuple[int, int, int, list[str]]:
        tracker = None if self.meter is None else self.meter.start(u)
        result = self._walk(u, tracker)
        if tracker is not None:
            self.meter.finish(tracker)
        return result

    def _walk(self, u: SimUser, tracker: UserRegret | None) -> tuple[int, int, int, list[str]]:
        catalog = self.world.catalog
        offers = invalid = errors = 0
        versions: list[str] = []
        while not u.done:
            body = {"user_id": u.user_id, "context": u.context, "ts": iso_seconds(u.ts)}
            r = self.client.post("/v1/next-step", json=body)
            if r.status_code != 200:
                errors += 1
                break
            d = r.json()
            versions.append(str(d.get("model_version")))
            if d.get("step") is None:
                break
            step = catalog.index.get(d["step"])
            if step is None or step not in catalog.eligible_indices(
                u.state[0], catalog.available(u.context)
            ):
                invalid += 1
                break
            outcome = _answer(u, step, tracker)
            offers += 1
            r = self.client.post(
                "/v1/outcomes",
                json={"decision_id": d["decision_id"], "outcome": outcome, "ts": iso_seconds(u.ts)},
            )
            if r.status_code != 201:
                errors += 1
                break
            if u.done:
                break
            _next_visit(u, step, outcome, tracker)
        return offers, invalid, errors, versions


def reference_table(
    world: World,
    users: int,
    seed: int,
    *,
    blind_seed: int | None = None,
    solver: ExactSolver | None = None,
) -> dict[str, Any]:
    """Exact optimum and baselines, plus the type-blind reference by Monte Carlo.

    The type-blind walk draws its own users (``seed + 1_000_003``) unless ``blind_seed`` names
    the seed of the users a policy was walked with: then, in a world without a shift, it walks
    those very users (common random numbers), so a policy's ratio to it measures the policy
    and not which users each side happened to draw.

    For a world with a shift these are the references of the world its first users meet, and
    ``after_shift`` holds the same table for the world after the shift.

    ``solver``: the world's ``ExactSolver`` when the caller already solved it (a world without
    a shift; a ``RegretMeter``'s), so the programme is not solved twice."""
    blind = seed + 1_000_003 if blind_seed is None else blind_seed
    if solver is not None and (world.shift is not None or solver.world is not world):
        raise NextstepError("reference_table: solver must be this stationary world's")
    out = _references(world.before_shift(), users, blind, solver)
    if world.shift is not None:
        out["after_shift"] = _references(world.after_shift(), users, blind)
    return out


def _references(
    world: World, users: int, blind_seed: int, solver: ExactSolver | None = None
) -> dict[str, Any]:
    solver = solver or ExactSolver(world)
    table = solver.table()
    blind, blind_se = TypeBlindReference(world, solver).monte_carlo(users, blind_seed)
    out = {name: row["overall"] for name, row in table.items()}
    out["type_blind"] = blind
    out["type_blind_se"] = blind_se
    out["per_type"] = {name: row["per_type"] for name, row in table.items()}
    return out


def rollout(
    world_name: str,
    users: int,
    seed: int,
    *,
    base: str | None = None,
    decider: Decider | None = None,
    api_key: str | None = None,
    concurrency: int = 8,
) -> dict[str, Any]:
    world = load_world(world_name)
    # a world that shifts has no single exact solution to score decisions against
    meter = RegretMeter(world) if world.shift is None else None
    if base is not None:
        step_fn: Any = OverHttp(world, base, api_key=api_key, concurrency=concurrency, meter=meter)
    elif decider is not None:
        walker = InProcess(world, decider)
        step_fn = walker if meter is None else Metered(world, walker.choose, meter)
    else:
        raise NextstepError("rollout needs --base URL or --policy P")
    res = run_users(world, users, seed, step_fn)
    # the type-blind reference walks (the first 4,000 of) these very users: the ratio then
    # measures the policy, not which users each side happened to draw
    solver = None if meter is None else meter.reference.solver
    ref = reference_table(world, min(users, 4000), seed, blind_seed=seed, solver=solver)
    best_fixed = max(ref[k] for k in ("ladder", "big_ask", "random"))
    return {
        "world": world.name,
        "result": res.as_dict(),
        "reference": ref,
        "ratio_to_optimum": res.conversion / ref["optimum"] if ref["optimum"] else None,
        "ratio_to_type_blind": res.conversion / ref["type_blind"] if ref["type_blind"] else None,
        "margin_over_best_fixed_se": (res.conversion - best_fixed) / res.se if res.se else None,
        "regret": _regret(meter, ref["type_blind"]),
    }


def _regret(meter: RegretMeter | None, type_blind: float) -> dict[str, float] | None:
    """The rollout's decision regret per user (``simulation.regret``), also as a share of the
    type-blind reference's value."""
    if meter is None:
        return None
    mean, se = meter.summary()
    return {"mean": mean, "se": se, "to_type_blind": mean / type_blind if type_blind else None}


def rollout_command(
    world: str,
    users: int,
    seed: int,
    base: str | None,
    policy: str | None,
    model: str,
    api_key: str | None,
    concurrency: int,
    json_out: Path | None,
) -> None:
    from rich.console import Console
    from rich.table import Table

    decider = None
    if base is None:
        if policy is None:
            raise NextstepError("give --base URL (a live service) or --policy P (in process)")

        w = load_world(world)
        config = PolicyConfig.parse(policy)
        scorer, version = (None, None)
        if config.name in ("planner", "greedy"):
            scorer, version = load_scorer(model, w.catalog)
        decider = Decider(w.catalog, config, scorer=scorer, model_version=version, seed=seed)
    out = rollout(
        world, users, seed, base=base, decider=decider, api_key=api_key, concurrency=concurrency
    )
    res, ref = out["result"], out["reference"]
    t = Table(title=f"rollout: {out['world']} ({users} users, seed {seed})")
    t.add_column("policy")
    t.add_column("conversion", justify="right")
    t.add_column("ratio to optimum", justify="right")
    label = "service" if base else (policy or "")
    t.add_row(label, f"{res['conversion']:.4f} ± {res['se']:.4f}", f"{out['ratio_to_optimum']:.3f}")
    for k in ("optimum", "type_blind", "ladder", "big_ask", "random"):
        val = ref[k]
        t.add_row(
            k,
            f"{val:.4f}" + (" (MC)" if k == "type_blind" else " (exact)"),
            f"{val / ref['optimum']:.3f}",
        )
    if "after_shift" in ref:  # the optimum above is the one before the world's shift
        t.add_row("optimum after the shift", f"{ref['after_shift']['optimum']:.4f} (exact)", "")
    Console().print(t)
    print(f"offers {res['offers']}, invalid decisions {res['invalid']}, errors {res['errors']}")
    if out["regret"] is not None:
        reg = out["regret"]
        share = (
            "" if reg["to_type_blind"] is None else f" ({reg['to_type_blind']:.3f} of type-blind)"
        )
        print(
            f"regret per user {reg['mean']:.4f} ± {reg['se']:.4f}{share}: what the decisions "
            "gave up against the exact values under each user's belief"
        )
    if json_out:
        json_out.write_text(json.dumps(out, indent=2), encoding="utf-8")
