"""Which policy a trained model should serve: the best lower confidence bound by trajectory OPE.

A learned planner is not always the best use of a model: on some logs a fixed rule converts more.
``nextstep train`` therefore values each candidate on the held-out users (``evaluation.offpolicy``
trajectory estimates) and recommends the one whose 95% lower bound is highest: the lower bound,
not the point estimate, because a recommendation must survive the noise of the log. Ties (lower
bounds within ``TIE``) go to the simpler policy, in the order of ``CANDIDATES``.

The lower bound of a trusted estimate is its bootstrap bound. A flagged (``low_overlap``)
estimate has no trustworthy bootstrap, but it is not worthless for ranking (a policy the log
followed for 40 effective users can be clearly better than one it followed for 2,000), so it
competes with the Korn-Graubard bound instead: the Clopper-Pearson lower limit of a proportion
observed as ``ESS * value`` successes in ``ESS`` trials (Korn & Graubard 1998, the survey
statistician's interval for a weighted proportion with few effective observations), for
rewards scaled to [0, max]. Unlike a distribution-free (Hoeffding) bound it knows that a value
near 0 is nearly certain to be small, so a policy estimated at 0 on thousands of effective users
no longer beats one estimated at 0.3 on a handful merely because the latter's bound is vacuous.
The recommendation says whether it rests on a trusted estimate; the service serves only trusted
recommendations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scipy.stats import beta

CANDIDATES: tuple[str, ...] = ("ladder", "big_ask", "greedy", "planner")  # simplest first
TIE = 1e-9
ALPHA = 0.05


@dataclass(frozen=True)
class Recommendation:
    """The recommended policy and the lower bound it won with."""

    policy: str
    low: float
    value: float
    trusted: bool


def simplicity(name: str) -> int:
    """Rank of a policy in ``CANDIDATES`` (unknown names after all of them)."""
    return CANDIDATES.index(name) if name in CANDIDATES else len(CANDIDATES)


def selection_low(
    value: float, low: float, ess: float, low_overlap: bool, max_reward: float = 1.0
) -> float:
    """The lower bound a candidate competes with (see the module docstring)."""
    if not low_overlap:
        return low
    if ess <= 0:
        return -math.inf
    successes = ess * min(max(value / max_reward, 0.0), 1.0)
    if successes <= 0:
        return 0.0
    return max_reward * float(beta.ppf(ALPHA / 2, successes, ess - successes + 1))


def recommend(results: Mapping[str, Any]) -> Recommendation:
    """The candidate with the best lower bound (``evaluation.offpolicy.Trajectory`` by name)."""
    if not results:
        raise ValueError("no candidate policies to choose from")
    lows = {
        n: selection_low(
            r.headline.value,
            r.estimates.get(r.headline.estimator, {}).get("low", r.headline.low),
            r.ess,
            r.low_overlap,
            float(r.extra.get("max_reward", 1.0)),
        )
        for n, r in results.items()
    }
    best = max(lows.values())
    tied = [n for n, low in lows.items() if low >= best - TIE]
    name = min(tied, key=simplicity)
    h = results[name].headline
    return Recommendation(name, lows[name], float(h.value), not results[name].low_overlap)
