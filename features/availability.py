"""``available_when``: which catalog steps exist for which users (docs/design.md section 3).

A step may carry rules on context values, e.g. ``available_when: {plan: [pro, team]}`` (the
step exists only for users whose ``plan`` is ``pro`` or ``team``) or ``{country: {not: [de]}}``
(everywhere but ``de``). Several columns must all hold. A value is compared as text, numbers in
their shortest form (``1``, ``1.0`` and ``"1"`` are the same value), so a rule written in YAML
matches the same value read from CSV, Parquet or a JSON request.

A user whose context lacks the column does not satisfy a list rule (a step for ``pro`` users
is not offered to a user of unknown plan) and does satisfy a ``not`` rule. The user's context
is the latest value of each column in their history, overlaid with the request's (the same
context the readiness features see).

Rules are evaluated into a bitmask of available steps, so eligibility stays a few integer
operations on the hot path; a catalog without rules never evaluates anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from features.errors import CatalogError

FIELD = "available_when"
ALL = -1  # the bitmask of every step (Python ints: -1 has every bit set)


@dataclass(frozen=True)
class Rule:
    """``column`` must (``negate`` False) or must not (True) take one of ``values``."""

    column: str
    values: frozenset[str]
    negate: bool = False

    def allows(self, value: Any) -> bool:
        if missing_value(value):
            return self.negate
        return (value_key(value) in self.values) != self.negate

    def describe(self) -> str:
        shown = ", ".join(sorted(self.values))
        return f"{self.column} {'not in' if self.negate else 'in'} [{shown}]"


def value_key(value: Any) -> str:
    """The text a value is compared as: numbers in their shortest form, the rest as ``str``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        x = float(value)
        if math.isfinite(x) and x == int(x):
            return str(int(x))
        return repr(x)
    text = str(value).strip()
    try:
        x = float(text)
    except ValueError:
        return text
    return value_key(x) if math.isfinite(x) else text


def missing_value(value: Any) -> bool:
    """None, NaN, pandas' NA or blank text: the context does not say (no pandas import: this
    runs on the hot path)."""
    if value is None or type(value).__name__ == "NAType":
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def parse_rules(raw: Any, step: str, source: str) -> tuple[Rule, ...]:
    """Validate one step's ``available_when`` (None or absent: no rule)."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping) or not raw:
        raise CatalogError(
            "available_when must be a mapping of context column to allowed values, e.g. "
            "{plan: [pro, team]} or {country: {not: [de]}}",
            source=source,
            step=step,
            field=FIELD,
        )
    rules: list[Rule] = []
    for column, spec in raw.items():
        if not isinstance(column, str) or not column.strip():
            raise CatalogError(
                f"available_when keys must be context column names, got {column!r}",
                source=source,
                step=step,
                field=FIELD,
            )
        negate = False
        if isinstance(spec, Mapping):
            if set(spec) not in ({"not"}, {"in"}):
                raise CatalogError(
                    f"available_when.{column} must be a list of values, {{in: [..]}} or "
                    f"{{not: [..]}}, got keys {sorted(map(str, spec))}",
                    source=source,
                    step=step,
                    field=FIELD,
                )
            negate = "not" in spec
            spec = spec["not" if negate else "in"]
        values = _values(spec, column, step, source)
        rules.append(Rule(column=column, values=values, negate=negate))
    return tuple(rules)


def _values(spec: Any, column: str, step: str, source: str) -> frozenset[str]:
    items: Sequence[Any] = spec if isinstance(spec, list) else [spec]
    if not items or any(v is None or isinstance(v, Mapping | list) for v in items):
        raise CatalogError(
            f"available_when.{column} needs one or more plain values (text or numbers), "
            f"got {spec!r}",
            source=source,
            step=step,
            field=FIELD,
        )
    return frozenset(value_key(v) for v in items)


def available_mask(rules: Sequence[tuple[Rule, ...]], context: Mapping[str, Any]) -> int:
    """Bitmask of the steps whose rules ``context`` satisfies (bit i = step i)."""
    mask = 0
    for i, step_rules in enumerate(rules):
        if all(r.allows(context.get(r.column)) for r in step_rules):
            mask |= 1 << i
    return mask
