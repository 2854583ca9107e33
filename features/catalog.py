"""The step catalog (docs/design.md section 3, a contract).

A catalog is loaded once and then only read, on the hot path too, so it is an immutable object
with integer indices for every step: policies and feature code work on indices and bitmasks of
accepted steps rather than on strings and sets.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from features.availability import ALL, FIELD, Rule, available_mask, parse_rules
from features.errors import CatalogError
from features.keys import first_typo, yaml_error_line

STAGES: tuple[str, ...] = ("start", "deliver", "guide", "build", "convert")
STAGE_INDEX: dict[str, int] = {s: i for i, s in enumerate(STAGES)}
GOAL_STAGE = "convert"
_KNOWN_FIELDS = frozenset({"id", "stage", "effort", "value", "requires"})
#: Keys with a meaning somewhere (contract fields, guardrail settings): an unknown key that is a
#: close match of one of these is a typo and refused; any other unknown key is kept in ``extra``.
#: The longest step id the HTTP API accepts (requests name steps by id).
MAX_STEP_ID_LENGTH = 256
_MEANINGFUL_KEYS = _KNOWN_FIELDS | {"available_when", "cooldown", "max_asks"}


@dataclass(frozen=True)
class Step:
    """One catalog step. ``extra`` keeps every field the contract does not name (e.g. ``title``)."""

    id: str
    stage: str
    effort: float
    value: float = 0.0
    requires: tuple[str, ...] = ()
    # not hashed: extra values may be unhashable (lists, dicts) and Catalog defines __hash__
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def is_goal(self) -> bool:
        return self.stage == GOAL_STAGE

    @property
    def stage_index(self) -> int:
        return STAGE_INDEX[self.stage]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update(
            id=self.id,
            stage=self.stage,
            effort=self.effort,
            value=self.value,
            requires=list(self.requires),
        )
        return out


class Catalog:
    """An ordered, validated set of steps.

    Steps are addressed by position (``index``) everywhere performance matters; a user's accepted
    steps are a bitmask over those positions (``1 << index``).
    """

    def __init__(self, steps: Sequence[Step], *, source: str = "catalog") -> None:
        self.source = source
        self.steps: tuple[Step, ...] = tuple(steps)
        _validate(self.steps, source)
        self.ids: tuple[str, ...] = tuple(s.id for s in self.steps)
        self.index: dict[str, int] = {s.id: i for i, s in enumerate(self.steps)}
        self.n = len(self.steps)
        self.efforts = [s.effort for s in self.steps]
        self.values = [s.value for s in self.steps]
        self.stage_indices = [s.stage_index for s in self.steps]
        self.goal_mask = sum(1 << i for i, s in enumerate(self.steps) if s.is_goal)
        self.requires_mask = [sum(1 << self.index[r] for r in s.requires) for s in self.steps]
        # the same as a (steps, steps) 0/1 matrix, row i marking what step i requires: what the
        # vectorised eligibility checks (planner look-ahead, logged transitions) multiply by
        self.requires = np.array(
            [[(m >> j) & 1 for j in range(self.n)] for m in self.requires_mask], dtype=np.int64
        ).reshape(self.n, self.n)
        # available_when rules per step (kept in ``extra``, so the catalog writes back as read)
        self.rules: tuple[tuple[Rule, ...], ...] = tuple(
            parse_rules(s.extra.get(FIELD), s.id, source) for s in self.steps
        )
        self.has_availability = any(self.rules)
        self.goal_indices = tuple(i for i, s in enumerate(self.steps) if s.is_goal)
        self.arrays = {
            "effort": np.asarray(self.efforts, dtype=np.float64),
            "stage": np.asarray(self.stage_indices, dtype=np.float64),
            "value": np.asarray(self.values, dtype=np.float64),
            "is_goal": np.asarray([float(s.is_goal) for s in self.steps]),
        }
        # Worth of reaching each goal: its ``value`` when goals carry values, else 1 (conversion).
        goal_values = [self.values[i] for i in self.goal_indices]
        use_values = any(v > 0 for v in goal_values)
        self.goal_rewards = [
            (self.values[i] if use_values else 1.0) if i in self.goal_indices else 0.0
            for i in range(self.n)
        ]

    # -- lookups ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(self.steps)

    def __contains__(self, step_id: object) -> bool:
        return step_id in self.index

    def __getitem__(self, step_id: str) -> Step:
        return self.steps[self.index[step_id]]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Catalog) and self.steps == other.steps

    def __hash__(self) -> int:
        return hash(self.steps)

    @property
    def goals(self) -> tuple[Step, ...]:
        return tuple(self.steps[i] for i in self.goal_indices)

    # -- state helpers ---------------------------------------------------------------------
    def mask_of(self, step_ids: Iterable[str]) -> int:
        m = 0
        for s in step_ids:
            m |= 1 << self.index[s]
        return m

    def is_converted(self, accepted_mask: int) -> bool:
        return bool(accepted_mask & self.goal_mask)

    def available(self, context: Mapping[str, Any] | None) -> int:
        """Bitmask of the steps that exist for a user with this context (``available_when``)."""
        if not self.has_availability:
            return ALL
        return available_mask(self.rules, context or {})

    def eligible_indices(self, accepted_mask: int, available: int = ALL) -> list[int]:
        """Steps not yet accepted whose requirements are all accepted and that are in the
        ``available`` mask (``Catalog.available``); none once converted."""
        if accepted_mask & self.goal_mask:
            return []
        return [
            i
            for i in range(self.n)
            if not (accepted_mask >> i) & 1
            and (self.requires_mask[i] & accepted_mask) == self.requires_mask[i]
            and (available >> i) & 1
        ]

    def eligible(self, accepted_mask: int, available: int = ALL) -> list[Step]:
        return [self.steps[i] for i in self.eligible_indices(accepted_mask, available)]

    # -- (de)serialisation -----------------------------------------------------------------
    def to_list(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.steps]

    def canonical_json(self) -> str:
        """The catalog as one canonical JSON document (``{"steps": [...]}``, sorted keys): equal
        catalogs give equal text, so its SHA-256 identifies what a service served."""
        return json.dumps(
            {"steps": self.to_list()},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            default=str,
        )

    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    @classmethod
    def from_data(cls, data: Any, *, source: str = "catalog") -> Catalog:
        """Build from parsed YAML/JSON: a list of steps or a mapping with key ``steps``."""
        if isinstance(data, Mapping):
            if "steps" not in data:
                raise CatalogError("a mapping catalog needs a 'steps' key", source=source)
            data = data["steps"]
        if not isinstance(data, list):
            raise CatalogError("expected a list of steps", source=source)
        steps = [_parse_step(item, pos, source) for pos, item in enumerate(data, start=1)]
        return cls(steps, source=source)


def load_catalog(path: str | Path) -> Catalog:
    """Read a YAML or JSON catalog file (by extension; YAML is a superset of JSON otherwise)."""
    p = Path(path)
    source = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError("file not found", source=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"cannot read file ({exc})", source=source) from None
    import yaml

    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise CatalogError(
            f"not valid YAML/JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
            source=source,
        ) from None
    except yaml.YAMLError as exc:
        raise CatalogError(f"not valid YAML/JSON ({yaml_error_line(exc)})", source=source) from None
    return Catalog.from_data(data, source=source)


def _parse_step(item: Any, pos: int, source: str) -> Step:
    if not isinstance(item, Mapping):
        raise CatalogError(f"step #{pos} is not a mapping", source=source)
    raw_id = item.get("id")
    typo = first_typo(item, _MEANINGFUL_KEYS)
    if typo is not None:  # before the field checks: ``efort`` is the cause, not a missing effort
        key, meant = typo
        named = isinstance(raw_id, str) and bool(raw_id.strip())
        raise CatalogError(
            f"{'' if named else f'step #{pos}: '}unknown key {key!r}; did you mean {meant!r}?",
            source=source,
            step=raw_id if named else None,
            field=key,
        )
    if not isinstance(raw_id, str) or not raw_id.strip():
        raise CatalogError(f"step #{pos} needs a non-empty string id", source=source, field="id")
    sid = raw_id
    if len(sid) > MAX_STEP_ID_LENGTH:
        raise CatalogError(
            f"step #{pos}: id has {len(sid)} characters; at most {MAX_STEP_ID_LENGTH} (the "
            "API's limit)",
            source=source,
            field="id",
        )
    stage = item.get("stage")
    if not isinstance(stage, str) or stage not in STAGE_INDEX:
        raise CatalogError(
            f"stage must be one of {', '.join(STAGES)}, got {stage!r}",
            source=source,
            step=sid,
            field="stage",
        )
    effort = _number(item.get("effort"), sid, "effort", source)
    if effort is None or not effort > 0:
        raise CatalogError(
            f"effort must be a number > 0, got {item.get('effort')!r}",
            source=source,
            step=sid,
            field="effort",
        )
    value = _number(item.get("value", 0), sid, "value", source)
    if value is None or value < 0:
        raise CatalogError(
            f"value must be a number >= 0, got {item.get('value')!r}",
            source=source,
            step=sid,
            field="value",
        )
    requires = item.get("requires")
    if requires is None:  # absent or empty (``requires:`` in YAML)
        requires = []
    if not isinstance(requires, list):
        raise CatalogError(
            f"requires must be a list of step ids, got {requires!r}",
            source=source,
            step=sid,
            field="requires",
        )
    if not all(isinstance(r, str) for r in requires):
        raise CatalogError(
            "requires must contain step ids (strings)", source=source, step=sid, field="requires"
        )
    for name, minimum in (("cooldown", 0.0), ("max_asks", 1.0)):
        if name in item:
            x = _number(item[name], sid, name, source)
            if x is None or x < minimum:
                raise CatalogError(
                    f"{name} must be a number >= {minimum:g}, got {item[name]!r}",
                    source=source,
                    step=sid,
                    field=name,
                )
    parse_rules(item.get(FIELD), sid, source)  # validated here, kept in ``extra``
    extra = {k: v for k, v in item.items() if k not in _KNOWN_FIELDS}
    return Step(
        id=sid,
        stage=stage,
        effort=effort,
        value=value,
        requires=tuple(requires),
        extra=extra,
    )


def _number(raw: Any, sid: str, name: str, source: str) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    try:
        x = float(raw)
    except OverflowError:  # an int too large for a float
        return None
    return x if math.isfinite(x) else None


def _validate(steps: Sequence[Step], source: str) -> None:
    if not steps:
        raise CatalogError("the catalog has no steps", source=source)
    seen: set[str] = set()
    for s in steps:
        if s.id in seen:
            raise CatalogError("duplicate step id", source=source, step=s.id, field="id")
        seen.add(s.id)
    for s in steps:
        for r in s.requires:
            if r not in seen:
                raise CatalogError(
                    f"requires unknown step {r!r}", source=source, step=s.id, field="requires"
                )
            if r == s.id:
                raise CatalogError("requires itself", source=source, step=s.id, field="requires")
    _check_acyclic(steps, source)
    if not any(s.is_goal for s in steps):
        raise CatalogError(
            "the catalog has no goal (a step with stage 'convert')", source=source, field="stage"
        )


def _check_acyclic(steps: Sequence[Step], source: str) -> None:
    """Depth-first search with an explicit stack, so long requires chains cannot hit the
    recursion limit."""
    by_id = {s.id: s for s in steps}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    for root in steps:
        if root.id in state:
            continue
        state[root.id] = 1
        path = [root.id]
        stack = [iter(root.requires)]
        while stack:
            r = next(stack[-1], None)
            if r is None:
                state[path.pop()] = 2
                stack.pop()
                continue
            if state.get(r) == 1:
                cycle = " -> ".join([*path[path.index(r) :], r])
                raise CatalogError(
                    f"cyclic requires ({cycle})", source=source, step=path[-1], field="requires"
                )
            if r not in state:
                state[r] = 1
                path.append(r)
                stack.append(iter(by_id[r].requires))
