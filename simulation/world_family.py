"""A family of random funnel worlds: ``random:SEED`` wherever a world is named.

Three hand-made worlds are examples, not a test: a planner or an estimator tuned to them can fail
on the next product's funnel. Every quality claim of nextstep is therefore made over worlds drawn
from this family, which is wide on purpose, so that no single policy shape (always the lowest
rung, always the goal, a fixed ladder length) wins everywhere. ``random_world_data(seed)`` returns
a world in the world-file format (``simulation.worlds``), so a drawn world can be written out,
read and edited like any other.

The distribution, per world (U = uniform, logU = log-uniform, all from one seeded generator):

* **catalog**: K ~ U{4..16} steps, G ~ U{1..min(3, K-2)} of them goals. Non-goal efforts
  logU(0.5, 8), sorted and split into the stages start, deliver, guide, build by rank; values
  drawn from {0, 0.5, 1, 2, 3}. Goal efforts are the largest non-goal effort times U(0.9, 2);
  goal values U(0.4, 1) with the largest set to 1 (the worth of reaching that goal).
  Prerequisites are a random DAG: with probability p_req ~ U(0, 0.5) each non-goal step requires
  one cheaper non-goal step and each goal one step of the upper half by effort.
* **dynamics**: each effect is on or off per world and drawn in strength when on, then scaled per
  type by U(0.3, 1.7): momentum per consecutive accept (on w.p. 0.7, U(0.1, 0.5)); resistance
  per consecutive decline (0.7, U(0.2, 0.8)); resistance per unit of effort gap above the largest
  step accepted so far (0.85, U(0.1, 0.5) per tenth of the largest goal effort); value received
  making asks easier (0.6, U(0.02, 0.3)); fatigue per offer made (0.5, U(0.05, 0.3)); drop after a
  decline rising with the effort gap (0.7) and with earlier declines (0.7).
* **population**: T ~ U{2..5} hidden types, weights Dirichlet(2); per type a base logit
  U(-0.5, 2), a drop logit U(-2.5, 0), attrition after an accept U(0, 0.1) or U(0.1, 0.45)
  (even odds), a mean return gap logU(2, 72) hours, and a channel and device mix that is
  informative but never decisive (the type's favourite channel has probability U(0.35, 0.7)).
* **horizon**: U{4..15} offers.
* **logs**: an incumbent that follows ``ladder`` (w.p. 0.5), ``big_ask`` (0.25) or ``random``
  (0.25), exploring uniformly with probability U(0.1, 0.7); propensities are exact.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

FAMILY_TAG = 0x5EED_F00D  # keeps the family's streams apart from every other seeded draw
_STAGES = ("start", "deliver", "guide", "build")
_CHANNELS = ("email", "search", "social", "referral")


def random_world_data(seed: int) -> dict[str, Any]:
    """World ``random:SEED`` in the world-file format (same seed, same world, on any machine)."""
    rng = np.random.default_rng([FAMILY_TAG, seed])
    k = int(rng.integers(4, 17))
    n_goals = int(rng.integers(1, min(3, k - 2) + 1))
    catalog = _catalog(rng, k - n_goals, n_goals)
    scale = max(s["effort"] for s in catalog) / 10.0  # efforts vary per world; effects must not
    effects = {
        "momentum": _effect(rng, 0.7, 0.1, 0.5),
        "decline_penalty": _effect(rng, 0.7, 0.2, 0.8),
        "resistance": _effect(rng, 0.85, 0.1, 0.5) / scale,
        "value_coef": _effect(rng, 0.6, 0.02, 0.3),
        "fatigue": _effect(rng, 0.5, 0.05, 0.3),
    }
    drop_gap = _effect(rng, 0.7, 0.05, 0.3) / scale
    drop_declines = _effect(rng, 0.7, 0.1, 0.6)
    n_types = int(rng.integers(2, 6))
    weights = rng.dirichlet(np.full(n_types, 2.0))
    types = [_user_type(rng, f"type{i}", float(w), effects) for i, w in enumerate(weights)]
    max_asks = int(rng.integers(4, 16))
    base = str(rng.choice(["ladder", "ladder", "big_ask", "random"]))
    explore = round(float(rng.uniform(0.1, 0.7)), 3)
    on = [name for name, v in effects.items() if v > 0]
    return {
        "description": (
            f"random world {seed}: {k} steps, {n_goals} goal(s), {n_types} types, "
            f"{max_asks} offers, effects {', '.join(on) or 'none'}; "
            f"logs from {base} exploring {explore:.0%}"
        ),
        "max_asks": max_asks,
        "drop_gap": round(drop_gap, 4),
        "drop_declines": round(drop_declines, 4),
        "logging_uniform": explore,
        "logging_base": base,
        "catalog": catalog,
        "types": types,
    }


def _effect(rng: np.random.Generator, p_on: float, low: float, high: float) -> float:
    """A dynamic effect's world-level strength: 0 when switched off (both draws always made,
    so switching one effect does not shift every later draw of the world)."""
    on = rng.random() < p_on
    strength = float(rng.uniform(low, high))
    return strength if on else 0.0


def _catalog(rng: np.random.Generator, n_steps: int, n_goals: int) -> list[dict[str, Any]]:
    efforts = np.sort(np.exp(rng.uniform(math.log(0.5), math.log(8.0), n_steps)))
    efforts = np.maximum(np.round(efforts, 1), 0.1)
    values = rng.choice([0.0, 0.5, 1.0, 2.0, 3.0], n_steps)
    p_req = float(rng.uniform(0.0, 0.5))
    steps: list[dict[str, Any]] = []
    for i in range(n_steps):
        stage = _STAGES[min(3, 4 * i // n_steps)]
        step: dict[str, Any] = {
            "id": f"{stage}_{i + 1}",
            "stage": stage,
            "effort": float(efforts[i]),
            "value": float(values[i]),
        }
        if i > 0 and rng.random() < p_req:
            step["requires"] = [steps[int(rng.integers(0, i))]["id"]]
        steps.append(step)
    goal_values = rng.uniform(0.4, 1.0, n_goals)
    goal_values = goal_values / goal_values.max()
    top = float(efforts[-1])
    upper = steps[n_steps // 2 :]
    for g in range(n_goals):
        goal: dict[str, Any] = {
            "id": f"convert_{g + 1}",
            "stage": "convert",
            "effort": round(top * float(rng.uniform(0.9, 2.0)), 1),
            "value": round(float(goal_values[g]), 3),
        }
        if rng.random() < p_req:
            goal["requires"] = [upper[int(rng.integers(0, len(upper)))]["id"]]
        steps.append(goal)
    return steps


def _user_type(
    rng: np.random.Generator, name: str, weight: float, effects: dict[str, float]
) -> dict[str, Any]:
    """One hidden type: the world's effects scaled for this type, its own readiness and pace."""
    scaled = {k: round(v * float(rng.uniform(0.3, 1.7)), 4) for k, v in effects.items()}
    leave = rng.uniform(0.0, 0.1) if rng.random() < 0.5 else rng.uniform(0.1, 0.45)
    favourite = int(rng.integers(0, len(_CHANNELS)))
    p_fav = float(rng.uniform(0.35, 0.7))
    rest = rng.dirichlet(np.ones(len(_CHANNELS) - 1)) * (1.0 - p_fav)
    others = iter(rest.tolist())
    channel = {c: (p_fav if i == favourite else next(others)) for i, c in enumerate(_CHANNELS)}
    mobile = float(rng.uniform(0.2, 0.8))
    return {
        "name": name,
        "weight": round(weight, 4),
        "base": round(float(rng.uniform(-0.5, 2.0)), 4),
        "drop": round(float(rng.uniform(-2.5, 0.0)), 4),
        "leave": round(float(leave), 4),
        "gap_hours": round(float(math.exp(rng.uniform(math.log(2.0), math.log(72.0)))), 2),
        "channel": {c: round(p, 4) for c, p in channel.items()},
        "device": {"mobile": round(mobile, 4), "desktop": round(1.0 - mobile, 4)},
        **scaled,
    }
