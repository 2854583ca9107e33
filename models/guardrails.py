"""Contact guardrails: rules that hold steps back *before* any policy chooses.

All are opt-in. With nothing configured (no ``cooldown``/``max_asks`` in the catalog and no
settings) nothing is suppressed and the policy alone decides. Each suppressed step is reported
with the rule that held it back, so a product team can see why a user was not asked.

* ``cooldown`` (catalog field, hours): a step the user declined is not offered again until its
  cooldown has passed since that decline.
* ``max_asks`` (catalog field): a step is offered to one user at most this many times.
* ``max_asks_per_period`` within ``period_hours`` (settings): a cap on all asks to one user.
* ``pause_after_declines`` consecutive declines pause the user for ``pause_hours`` (settings).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from features.catalog import Catalog
from features.state import ACCEPTED, ASK_TIMES_KEPT, HOUR, UserState


@dataclass(frozen=True)
class GuardrailSettings:
    """User-level rules (catalog fields carry the per-step ones)."""

    max_asks_per_period: int | None = None
    period_hours: float = 24.0
    pause_after_declines: int | None = None
    pause_hours: float = 72.0

    def __post_init__(self) -> None:
        if self.max_asks_per_period is not None and not (
            1 <= self.max_asks_per_period <= ASK_TIMES_KEPT
        ):  # a user's state keeps the latest ASK_TIMES_KEPT ask times
            raise ValueError(f"max_asks_per_period must be between 1 and {ASK_TIMES_KEPT}")
        if self.pause_after_declines is not None and self.pause_after_declines < 1:
            raise ValueError("pause_after_declines must be >= 1")
        if self.period_hours <= 0 or self.pause_hours < 0:
            raise ValueError("period_hours must be > 0 and pause_hours >= 0")


@dataclass(frozen=True)
class Suppressed:
    step: str
    rule: str  # "cooldown" | "max_asks" | "user_cap" | "pause"


def apply_guardrails(
    catalog: Catalog,
    state: UserState,
    eligible: Sequence[int],
    now: float,
    settings: GuardrailSettings | None = None,
) -> tuple[list[int], list[Suppressed]]:
    """Split eligible steps into (allowed, suppressed with the rule that held each back)."""
    settings = settings or GuardrailSettings()
    suppressed: list[Suppressed] = []
    user_rule = _user_rule(state, now, settings)
    if user_rule is not None:
        return [], [Suppressed(catalog.ids[i], user_rule) for i in eligible]
    allowed: list[int] = []
    for i in eligible:
        extra = catalog.steps[i].extra
        max_asks = extra.get("max_asks")
        if isinstance(max_asks, int | float) and state.step_offers.get(i, 0) >= max_asks:
            suppressed.append(Suppressed(catalog.ids[i], "max_asks"))
            continue
        cooldown = extra.get("cooldown")
        last = state.step_last_ts.get(i)
        if (
            isinstance(cooldown, int | float)
            and last is not None
            and state.step_declines.get(i, 0) > 0
            and now - last < float(cooldown) * HOUR
        ):
            suppressed.append(Suppressed(catalog.ids[i], "cooldown"))
            continue
        allowed.append(i)
    return allowed, suppressed


def _user_rule(state: UserState, now: float, s: GuardrailSettings) -> str | None:
    if (
        s.pause_after_declines is not None
        and state.cons_declines >= s.pause_after_declines
        and state.last_outcome != ACCEPTED
        and now - state.last_ts < s.pause_hours * HOUR
    ):
        return "pause"
    if s.max_asks_per_period is not None:
        start = now - s.period_hours * HOUR
        recent = sum(1 for t in state.ask_times if start < t <= now)
        if recent >= s.max_asks_per_period:
            return "user_cap"
    return None


def has_step_rules(catalog: Catalog) -> bool:
    """Whether the catalog configures any per-step guardrail (fast path when it does not)."""
    return any("cooldown" in s.extra or "max_asks" in s.extra for s in catalog.steps)
