"""Guardrails hold steps back before any policy chooses, and say which rule did."""

from __future__ import annotations

import pytest

from features.catalog import Catalog
from features.errors import CatalogError
from features.state import HOUR, UserState
from models.decide import Decider
from models.guardrails import GuardrailSettings, apply_guardrails
from models.policies import PolicyConfig

CAT = Catalog.from_data(
    [
        {"id": "tip", "stage": "start", "effort": 1, "cooldown": 48},
        {"id": "clip", "stage": "deliver", "effort": 2, "max_asks": 2},
        {"id": "buy", "stage": "convert", "effort": 8},
    ]
)
T0 = 1_700_000_000.0


def _state(*events: tuple[str, str, float]) -> UserState:
    st = UserState()
    for step, outcome, ts in events:
        st.apply(CAT, CAT.index[step], outcome, ts)
    return st


def test_nothing_suppressed_without_configuration() -> None:
    plain = Catalog.from_data(
        [{"id": "a", "stage": "start", "effort": 1}, {"id": "g", "stage": "convert", "effort": 3}]
    )
    st = UserState()
    st.apply(plain, 0, "declined", T0)
    allowed, held = apply_guardrails(plain, st, [0, 1], T0 + 1)
    assert allowed == [0, 1] and held == []


def test_declined_step_is_not_reoffered_within_its_cooldown() -> None:
    st = _state(("tip", "declined", T0))
    decider = Decider(CAT, PolicyConfig("ladder"))
    within = decider.decide("u", st, now=T0 + 47 * HOUR)
    assert within.step == "clip"
    assert {"step": "tip", "rule": "cooldown"} in within.suppressed
    after = decider.decide("u", st, now=T0 + 49 * HOUR)
    assert after.step == "tip" and after.suppressed == []


def test_max_asks_per_step() -> None:
    st = _state(("clip", "declined", T0), ("clip", "declined", T0 + HOUR))
    allowed, held = apply_guardrails(CAT, st, CAT.eligible_indices(0), T0 + 2 * HOUR)
    assert CAT.index["clip"] not in allowed
    assert [h.rule for h in held if h.step == "clip"] == ["max_asks"]


def test_pause_after_consecutive_declines_and_suppressed_reason() -> None:
    g = GuardrailSettings(pause_after_declines=2, pause_hours=24)
    st = _state(("clip", "declined", T0), ("buy", "declined", T0 + HOUR))
    decider = Decider(CAT, PolicyConfig("ladder"), guardrails=g)
    paused = decider.decide("u", st, now=T0 + 10 * HOUR)
    assert paused.step is None and paused.reason == "suppressed"
    assert {s["rule"] for s in paused.suppressed} == {"pause"}
    assert decider.decide("u", st, now=T0 + 30 * HOUR).step is not None


def test_cap_on_asks_per_period() -> None:
    g = GuardrailSettings(max_asks_per_period=2, period_hours=24)
    st = _state(("tip", "accepted", T0), ("clip", "declined", T0 + HOUR))
    decider = Decider(CAT, PolicyConfig("ladder"), guardrails=g)
    capped = decider.decide("u", st, now=T0 + 2 * HOUR)
    assert capped.reason == "suppressed" and {s["rule"] for s in capped.suppressed} == {"user_cap"}
    assert decider.decide("u", st, now=T0 + 26 * HOUR).step is not None


@pytest.mark.parametrize(
    ("field", "value"), [("cooldown", -1), ("cooldown", "1h"), ("max_asks", 0), ("max_asks", None)]
)
def test_bad_guardrail_fields_are_rejected(field: str, value: object) -> None:
    with pytest.raises(CatalogError, match=field):
        Catalog.from_data([{"id": "a", "stage": "convert", "effort": 1, field: value}])
