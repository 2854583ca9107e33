"""The fixed baseline rules, as pure functions of the catalog and the accepted steps.

They are shared by the served policies (``models.policy_base``) and by the simulator's exact
dynamic programme, so "ladder" means exactly the same thing in a benchmark table and in a
response. Ties break by catalog order, which keeps every decision deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

from features.catalog import Catalog


def ladder_choice(catalog: Catalog, eligible: Sequence[int]) -> int:
    """The lowest-effort eligible step (lowest funnel stage, then catalog order, on ties)."""
    return min(eligible, key=lambda i: (catalog.efforts[i], catalog.stage_indices[i], i))


def big_ask_choice(catalog: Catalog, eligible: Sequence[int]) -> int:
    """The cheapest eligible goal; else the cheapest eligible step that some goal needs."""
    goals = [i for i in eligible if (catalog.goal_mask >> i) & 1]
    if goals:
        return min(goals, key=lambda i: (catalog.efforts[i], i))
    needed = goal_prerequisites(catalog)
    toward = [i for i in eligible if (needed >> i) & 1]
    pool = toward or list(eligible)
    return min(pool, key=lambda i: (catalog.efforts[i], i))


def goal_prerequisites(catalog: Catalog) -> int:
    """Bitmask of every step some goal requires, directly or transitively."""
    mask = 0
    frontier = list(catalog.goal_indices)
    while frontier:
        i = frontier.pop()
        req = catalog.requires_mask[i]
        new = req & ~mask
        mask |= req
        frontier.extend(j for j in range(catalog.n) if (new >> j) & 1)
    return mask
