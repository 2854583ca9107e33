"""Which policy a trained model should serve: the best lower confidence bound by trajectory OPE.

A learned planner is not always the best use of a model: on some logs a fixed rule converts more.
``nextstep train`` therefore values each candidate on the held-out users (``training.offpolicy``
trajectory estimates) and recommends the one whose 95% lower bound is highest. The lower bound,
not the point estimate, because a recommendation must survive the noise of the log; an estimate
flagged ``low_overlap`` reports the trivial lower bound 0, so a policy the log cannot speak for
is never recommended over one it can. Ties (lower bounds within ``TIE``) go to the simpler
policy, in the order of ``CANDIDATES``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CANDIDATES: tuple[str, ...] = ("ladder", "big_ask", "greedy", "planner")  # simplest first
FIXED: tuple[str, ...] = ("ladder", "big_ask")  # need no model
TIE = 1e-9
TAG = "nextstep.recommended_policy"  # model-version tag holding the recommendation


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


def recommend(results: Mapping[str, Any]) -> Recommendation:
    """The candidate with the best reported lower bound (``Trajectory`` results by name)."""
    if not results:
        raise ValueError("no candidate policies to choose from")
    best_low = max(r.headline.low for r in results.values())
    tied = [n for n, r in results.items() if r.headline.low >= best_low - TIE]
    name = min(tied, key=simplicity)
    h = results[name].headline
    return Recommendation(name, float(h.low), float(h.value), not results[name].low_overlap)
