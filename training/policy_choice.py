"""Which policy a trained model should serve: the best lower confidence bound by trajectory OPE.

A learned planner is not always the best use of a model: on some logs a fixed rule converts more.
``nextstep train`` therefore values each candidate on the held-out users (``training.offpolicy``
trajectory estimates) and recommends the one whose 95% lower bound is highest. The lower bound,
not the point estimate, because a recommendation must survive the noise of the log; an estimate
flagged ``low_overlap`` does not compete, so a policy the log cannot speak for is never
recommended over one it can; when the log speaks for none, the recommendation is marked
untrusted and the service keeps its configured default. Ties (lower bounds within ``TIE``) go
to the simpler policy, in the order of ``CANDIDATES``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CANDIDATES: tuple[str, ...] = ("ladder", "big_ask", "greedy", "planner")  # simplest first
FIXED: tuple[str, ...] = ("ladder", "big_ask")  # need no model
TIE = 1e-9


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
    """The candidate with the best reported lower bound (``Trajectory`` results by name).

    Only trusted estimates compete; when none is trusted the simplest candidate is returned
    with ``trusted`` False, and callers should not act on it (the service keeps its default).
    """
    if not results:
        raise ValueError("no candidate policies to choose from")
    pool = {n: r for n, r in results.items() if not r.low_overlap} or dict(results)
    best_low = max(r.headline.low for r in pool.values())
    tied = [n for n, r in pool.items() if r.headline.low >= best_low - TIE]
    name = min(tied, key=simplicity)
    h = results[name].headline
    return Recommendation(name, float(h.low), float(h.value), not results[name].low_overlap)
