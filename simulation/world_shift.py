"""Non-stationary worlds: the ``shift:`` key of a world file.

A learning loop is only worth its keep if it notices when users change and recovers, so the
simulator can change its users part-way through a run. A shift happens once, at a fraction
``at`` of the run's users in arrival order (a world with a shift spreads arrivals evenly over
the simulated period in that order, so the same fraction holds in event time): every user who
arrives after it follows the shifted world. Two kinds of change, alone or together:

* ``readiness``: a logit added to P(accept) of named steps (``{purchase: 2.0}``: buying
  became far more acceptable), for every type or, with ``types: [..]``, for the named ones;
* ``weights``: new weights of the user types (every type named; 0 retires a type).

::

    shift:
      at: 0.5
      readiness: {purchase: 2.0}
      types: [hesitant]          # optional: only these types change (default: all)
      weights: {hesitant: 0.2, eager: 0.6, browser: 0.2}   # optional

The world after the shift is an ordinary stationary world (``World.after_shift()``), so the
exact solver computes its optimum like any other's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from features.errors import InputError
from features.keys import first_unknown, unknown_key_message

SHIFT_KEYS = frozenset({"at", "readiness", "types", "weights"})


@dataclass(frozen=True)
class Shift:
    """One change of a world's users, at fraction ``at`` of the run's users (arrival order)."""

    at: float
    readiness: Mapping[str, float] = field(default_factory=dict)  # step id -> logit added
    types: tuple[str, ...] = ()  # types the readiness change hits (empty: every type)
    weights: Mapping[str, float] | None = None  # type name -> weight after the shift

    def first_shifted(self, users: int) -> int:
        """Arrival position of the first user who meets the shifted world, of ``users``."""
        return min(users, max(0, math.ceil(self.at * users - 1e-9)))

    def hits(self, type_name: str) -> bool:
        return not self.types or type_name in self.types


def parse_shift(raw: Any, *, steps: Sequence[str], type_names: Sequence[str], source: str) -> Shift:
    """Validate a world file's ``shift:`` mapping against the world's steps and types."""
    if not isinstance(raw, Mapping):
        raise InputError("shift must be a mapping (at, readiness, types, weights)", source=source)
    unknown = first_unknown(raw, SHIFT_KEYS)
    if unknown is not None:
        raise InputError(
            f"shift: {unknown_key_message(unknown, SHIFT_KEYS)}", source=source, field=unknown
        )
    if "at" not in raw:
        raise InputError(
            "shift needs 'at' (the fraction of users after which it holds)", source=source
        )
    at = _number(raw["at"], "shift.at", source)
    if not 0.0 < at < 1.0:
        raise InputError(f"shift.at must be in (0, 1), got {at}", source=source, field="at")
    if "readiness" not in raw and "weights" not in raw:
        raise InputError("shift needs 'readiness' or 'weights' (what changes)", source=source)
    readiness = _named_numbers(raw.get("readiness", {}), "readiness", steps, "step", source)
    types = raw.get("types", [])
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise InputError("shift.types must be a list of type names", source=source, field="types")
    for t in types:
        _known(t, type_names, "type", "types", source)
    if types and not readiness:
        raise InputError("shift.types names who the readiness change hits", source=source)
    weights = None
    if "weights" in raw:
        weights = _named_numbers(raw["weights"], "weights", type_names, "type", source)
        missing = [t for t in type_names if t not in weights]
        if missing:
            raise InputError(
                f"shift.weights must give every type a weight (missing: {', '.join(missing)})",
                source=source,
                field="weights",
            )
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise InputError(
                "shift.weights must be >= 0 and not all 0", source=source, field="weights"
            )
    return Shift(at=at, readiness=readiness, types=tuple(types), weights=weights)


def _number(raw: Any, what: str, source: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise InputError(f"{what} must be a finite number, got {raw!r}", source=source)
    return float(raw)


def _named_numbers(
    raw: Any, key: str, known: Sequence[str], kind: str, source: str
) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        raise InputError(f"shift.{key} must map {kind} names to numbers", source=source, field=key)
    out: dict[str, float] = {}
    for name, value in raw.items():
        _known(str(name), known, kind, key, source)
        out[str(name)] = _number(value, f"shift.{key}.{name}", source)
    return out


def _known(name: str, known: Sequence[str], kind: str, key: str, source: str) -> None:
    """A misspelt step or type would make the shift a silent no-op: refuse it."""
    if name not in known:
        hint = unknown_key_message(name, known).replace("unknown key", f"unknown {kind}")
        raise InputError(f"shift.{key}: {hint}", source=source, field=name)
