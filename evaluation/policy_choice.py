"""Which policy a trained model should serve: the planner, unless another is confidently better.

A learned planner is not always the best use of a model: on some logs a fixed rule converts more.
``nextstep train`` therefore values each candidate on the held-out users (``evaluation.offpolicy``
trajectory estimates). The planner (``DEFAULT``) is recommended unless a challenger's 95% lower
bound lies above the planner's 95% upper bound; among such challengers the best lower bound wins,
ties (within ``TIE``) to the simpler policy in the order of ``CANDIDATES``.

Why not simply the best lower bound: a fixed rule the log followed closely has a tight interval,
the planner (which the log rarely follows for a whole walk) a wide one, so ranking by lower bound
handed the recommendation to a tight but worse rule. In the two 30-world families of
``benchmarks.ope_coverage`` that rule gave up 0.025 and 0.042 of conversion on average against the
best candidate's true value; asking a challenger for evidence that it is better, not merely
tighter, gives up 0.004 and 0.007. Without a planner among the candidates, the best lower bound
wins.

The lower bound of a trusted estimate is its bootstrap bound. A flagged (``low_overlap``)
estimate has no trustworthy bootstrap, but it is not worthless for ranking (a policy the log
followed for 40 effective users can be clearly better than one it followed for 2,000), so it
competes with the Korn-Graubard bound instead: the Clopper-Pearson lower limit of a proportion
observed as ``ESS * value`` successes in ``ESS`` trials (Korn & Graubard 1998, the survey
statistician's interval for a weighted proportion with few effective observations), for
rewards scaled to [0, max]. Unlike a distribution-free (Hoeffding) bound it knows that a value
near 0 is nearly certain to be small, so a policy estimated at 0 on thousands of effective users
no longer beats one estimated at 0.3 on a handful merely because the latter's bound is vacuous.
Symmetrically, a flagged planner estimate's upper bound is the wider of its bootstrap and
Clopper-Pearson upper limits, so a thin log does not make the planner look confidently worse. The
recommendation says whether it rests on a trusted estimate; the service serves only trusted
recommendations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scipy.stats import beta

CANDIDATES: tuple[str, ...] = ("ladder", "big_ask", "greedy", "planner")  # simplest first
DEFAULT = "planner"  # the product's policy: served unless a challenger is confidently better
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
    successes = _successes(value, ess, max_reward)
    if successes <= 0:
        return 0.0
    return max_reward * float(beta.ppf(ALPHA / 2, successes, ess - successes + 1))


def _successes(value: float, ess: float, max_reward: float) -> float:
    """A flagged estimate read as a proportion: successes among ``ess`` effective users."""
    return ess * min(max(value / max_reward, 0.0), 1.0)


def selection_high(
    value: float, high: float, ess: float, low_overlap: bool, max_reward: float = 1.0
) -> float:
    """The upper bound the default policy defends with: its bootstrap bound when trusted, the
    wider of that and the Clopper-Pearson upper limit when flagged."""
    if not low_overlap:
        return high
    if ess <= 0:
        return math.inf
    successes = _successes(value, ess, max_reward)
    if successes >= ess:
        return max(high, max_reward)
    return max(high, max_reward * float(beta.ppf(1 - ALPHA / 2, successes + 1, ess - successes)))


@dataclass(frozen=True)
class Bounds:
    """What the rule reads of one candidate's estimate: its value, raw 95% bounds, effective
    users, whether it is flagged and the largest reward (the scale of the proportion)."""

    value: float
    low: float
    high: float
    ess: float
    low_overlap: bool
    max_reward: float = 1.0

    @classmethod
    def of(cls, result: Any) -> Bounds:
        """The bounds of an ``evaluation.offpolicy.Trajectory``'s headline estimate."""
        h = result.headline
        raw = result.estimates.get(h.estimator, {})
        return cls(
            float(h.value),
            float(raw.get("low", h.low)),
            float(raw.get("high", h.high)),
            float(result.ess),
            bool(result.low_overlap),
            float(result.extra.get("max_reward", 1.0)),
        )

    @property
    def selection_low(self) -> float:
        return selection_low(self.value, self.low, self.ess, self.low_overlap, self.max_reward)

    @property
    def selection_high(self) -> float:
        return selection_high(self.value, self.high, self.ess, self.low_overlap, self.max_reward)


def choose(bounds: Mapping[str, Bounds]) -> str:
    """The recommended candidate's name (the rule of the module docstring)."""
    if not bounds:
        raise ValueError("no candidate policies to choose from")
    lows = {n: b.selection_low for n, b in bounds.items()}
    if DEFAULT in bounds:
        bar = bounds[DEFAULT].selection_high
        lows = {n: low for n, low in lows.items() if n != DEFAULT and low > bar + TIE}
        if not lows:
            return DEFAULT
    best = max(lows.values())
    return min((n for n, low in lows.items() if low >= best - TIE), key=simplicity)


def recommend(results: Mapping[str, Any]) -> Recommendation:
    """The recommended candidate (``evaluation.offpolicy.Trajectory`` by name)."""
    bounds = {n: Bounds.of(r) for n, r in results.items()}
    name = choose(bounds)
    b = bounds[name]
    return Recommendation(name, b.selection_low, b.value, not b.low_overlap)
