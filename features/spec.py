"""Which features a model uses and how context values are encoded.

A ``FeatureSpec`` is learned from the training log (which context columns exist, the categories
of the string ones) and travels with the model, so the service encodes a request's context exactly
as training did. Unknown categories become NaN, which LightGBM treats as missing: a new channel
is a prior, never an error.

Every context column is kept, whatever its width (a column is left out only when it has no
value at all, and that is reported):

* numbers stay numbers (LightGBM splits on them; NaN is missing);
* text with at most ``MAX_CATEGORIES`` distinct values: one category per value;
* wider text: the ``MAX_CATEGORIES - 1`` most frequent values (ties by value) each keep a
  category and every other value, seen in training or new, shares one "other" category (code
  ``len(categories)``). A long tail of rare values carries little signal per value and would
  let the trees memorise noise; pooled, it is one well-estimated group. All categories go to
  LightGBM as categorical features, regularised by its ``cat_smooth``,
  ``min_data_per_group`` and ``cat_l2``, the last grown with the log
  (``ReadinessModel.lightgbm_params``).

``describe()`` says, per column, what was done; ``nextstep train`` prints it and logs it.

Step identity (optional, ``step_ids``): a last column ``step_id``, the offered step's position
among the steps of the training log, categorical. The attribute columns (effort, stage, value,
is-goal) stay, so a step the model never saw (NaN here, missing to LightGBM) still gets the
prior its attributes give; steps with equal attributes but different appeal become different.
Positions are by id, not by catalog order, so a reordered or extended catalog keeps its codes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from features.catalog import Catalog
from features.state import (
    CANDIDATE_FEATURES,
    STATE_FEATURES,
    StateColumns,
    UserState,
    is_missing,
    merged_context,
)

MAX_CATEGORIES = 64


@dataclass(frozen=True)
class FeatureSpec:
    """Feature layout: state features, candidate features, then one column per context field.

    ``pooled`` names the categorical columns whose values outside ``categories`` share one
    "other" code; ``notes`` says in words how each context column of the training log was
    treated (including any left out)."""

    context_columns: tuple[str, ...] = ()
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    pooled: frozenset[str] = frozenset()
    notes: Mapping[str, str] = field(default_factory=dict)
    step_ids: tuple[str, ...] = ()  # non-empty: the step_id feature (see the module docstring)

    def step_codes(self, catalog: Catalog) -> np.ndarray:
        """Per catalog position: the ``step_id`` feature value (NaN for a step new to it)."""
        pos = {sid: float(i) for i, sid in enumerate(self.step_ids)}
        return np.array([pos.get(sid, math.nan) for sid in catalog.ids], dtype=np.float64)

    def other_code(self, column: str) -> int | None:
        """The code of the pooled "other" category of ``column`` (None when it has none)."""
        return len(self.categories[column]) if column in self.pooled else None

    def describe(self) -> dict[str, str]:
        """Per context column of the training log: what became of it, in words."""
        out = dict(self.notes)
        for c in self.context_columns:
            out.setdefault(
                c, _values(len(self.categories[c])) if c in self.categories else "numeric"
            )
        return out

    @property
    def names(self) -> list[str]:
        step = ["step_id"] if self.step_ids else []
        ctx = (f"ctx_{c}" for c in self.context_columns)
        return [*STATE_FEATURES, *CANDIDATE_FEATURES, *ctx, *step]

    @property
    def categorical_indices(self) -> list[int]:
        base = len(STATE_FEATURES) + len(CANDIDATE_FEATURES)
        out = [base + i for i, c in enumerate(self.context_columns) if c in self.categories]
        if self.step_ids:
            out.append(base + len(self.context_columns))
        return out

    def encode_context(self, context: Mapping[str, Any]) -> list[float]:
        """Context values in feature order: category codes or numbers, NaN when unknown."""
        out: list[float] = []
        for col in self.context_columns:
            v = context.get(col)
            cats = self.categories.get(col)
            if cats is not None:
                try:
                    out.append(float(cats.index(str(v))) if v is not None else math.nan)
                except ValueError:
                    out.append(float(len(cats)) if col in self.pooled else math.nan)
            else:
                out.append(_to_float(v))
        return out

    def encode_merged(
        self, known: Mapping[str, Any], request: Mapping[str, Any] | None
    ) -> list[float]:
        """Encode the user's known context overlaid with the request's non-missing values: the
        context every feature row of one decision carries."""
        merged = dict(known)
        if request:
            merged.update({k: v for k, v in request.items() if not is_missing(v)})
        return self.encode_context(merged)

    def to_dict(self) -> dict[str, Any]:
        return {
            "context_columns": list(self.context_columns),
            "categories": {k: list(v) for k, v in self.categories.items()},
            "pooled": sorted(self.pooled),
            "notes": dict(self.notes),
            "step_ids": list(self.step_ids),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        return cls(
            context_columns=tuple(data.get("context_columns", ())),
            categories={k: tuple(v) for k, v in data.get("categories", {}).items()},
            pooled=frozenset(data.get("pooled", ())),
            notes=dict(data.get("notes", {})),
            step_ids=tuple(data.get("step_ids", ())),
        )

    @classmethod
    def from_frame(cls, frame: Any, context_columns: Sequence[str]) -> FeatureSpec:
        """Learn the context layout from a validated event frame (pandas)."""
        return cls.from_counts(context_columns, *context_facts(frame, context_columns))

    @classmethod
    def from_counts(
        cls,
        context_columns: Sequence[str],
        numeric: set[str],
        counts: Mapping[str, Mapping[str, int]],
    ) -> FeatureSpec:
        """The layout from per-column facts: which columns are numeric (with a value) and, for
        the others, how many rows carry each text value. Shared by both training engines."""
        cols: list[str] = []
        cats: dict[str, tuple[str, ...]] = {}
        pooled: set[str] = set()
        notes: dict[str, str] = {}
        for c in context_columns:
            if c in numeric:
                cols.append(c)
                notes[c] = "numeric"
                continue
            vc = counts.get(c, {})
            if not vc:
                notes[c] = "left out: no value in the training log"
                continue
            cols.append(c)
            if len(vc) <= MAX_CATEGORIES:
                cats[c] = tuple(sorted(vc))
                notes[c] = _values(len(vc))
                continue
            top = sorted(vc.items(), key=lambda kv: (-kv[1], kv[0]))[: MAX_CATEGORIES - 1]
            cats[c] = tuple(sorted(k for k, _ in top))
            pooled.add(c)
            share = sum(n for _, n in top) / sum(vc.values())
            notes[c] = (
                f"categorical, {len(vc)} values: the {len(top)} most frequent kept "
                f"({100 * share:.1f}% of rows), the other {len(vc) - len(top)} pooled as 'other'"
            )
        return cls(
            context_columns=tuple(cols), categories=cats, pooled=frozenset(pooled), notes=notes
        )


def _values(n: int) -> str:
    return f"categorical, {n} value{'' if n == 1 else 's'}"


def context_facts(
    frame: Any, context_columns: Sequence[str]
) -> tuple[set[str], dict[str, dict[str, int]]]:
    """``(numeric, counts)`` of a validated event frame or a part of one, what ``from_counts``
    learns the layout from: the numeric columns with a value, and for the others the rows per
    text value. The Dask engine adds the parts' facts up with ``merge_facts``."""
    import pandas as pd  # the service imports this module and never needs pandas

    numeric: set[str] = set()
    counts: dict[str, dict[str, int]] = {}
    for c in context_columns:
        s = frame[c]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            if s.notna().any():
                numeric.add(c)
            else:
                counts[c] = {}
            continue
        counts[c] = value_counts(s)
    return numeric, counts


def merge_facts(
    parts: Sequence[tuple[set[str], Mapping[str, Mapping[str, int]]]],
) -> tuple[set[str], dict[str, dict[str, int]]]:
    """The ``context_facts`` of a whole log from those of its parts."""
    numeric: set[str] = set()
    counts: dict[str, dict[str, int]] = {}
    for part_numeric, part_counts in parts:
        numeric |= part_numeric
        for c, vc in part_counts.items():
            merged = counts.setdefault(c, {})
            for k, n in vc.items():
                merged[k] = merged.get(k, 0) + n
    return numeric, counts


def value_counts(s: Any) -> dict[str, int]:
    """Rows per text value of a pandas Series (missing values left out)."""
    vc = s.value_counts(dropna=True, sort=False)
    out: dict[str, int] = {}
    for k, n in zip(vc.index, vc.to_numpy(), strict=True):
        key = str(k)
        out[key] = out.get(key, 0) + int(n)
    return out


def candidate_matrix(
    spec: FeatureSpec,
    catalog: Catalog,
    state: UserState,
    candidates: Sequence[int],
    now: float,
    context: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Feature rows (n_candidates, n_features) for offering each candidate now.

    ``context`` is the request's context; fields it lacks fall back to the latest known value in
    the user's history, exactly as the offline builder forward-fills within a user.
    """
    return candidate_block(spec, catalog, [(state, now)], [list(candidates)], context)


def candidate_block(
    spec: FeatureSpec,
    catalog: Catalog,
    nodes: Sequence[tuple[UserState, float]],
    cands: Sequence[Sequence[int]],
    context: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Feature rows for many (state, time) nodes at once, each with its own candidates.

    The planner scores whole levels of its look-ahead tree with one call: the state part is
    computed once per node and repeated, the candidate part is gathered from catalog arrays.
    """
    counts = np.fromiter((len(c) for c in cands), dtype=np.int64, count=len(cands))
    total = int(counts.sum())
    n_state = len(STATE_FEATURES)
    n_base = n_state + len(CANDIDATE_FEATURES)
    X = np.empty((total, len(spec.names)), dtype=np.float64)
    if total == 0:
        return X
    keep = [i for i, c in enumerate(cands) if len(c)]
    kept_counts = counts[keep]
    S = np.array([nodes[i][0].state_vector(nodes[i][1]) for i in keep], dtype=np.float64)
    X[:, :n_state] = np.repeat(S, kept_counts, axis=0)
    steps = np.fromiter((s for i in keep for s in cands[i]), dtype=np.int64, count=total)
    _candidate_columns(
        X,
        spec,
        catalog,
        steps,
        np.repeat(np.array([nodes[i][0].max_effort for i in keep]), kept_counts),
        [nodes[i][0].step_offers.get(s, 0) for i in keep for s in cands[i]],
        [nodes[i][0].step_declines.get(s, 0) for i in keep for s in cands[i]],
    )
    if spec.context_columns:
        cache: dict[int, list[float]] = {}
        rows = []
        for i in keep:
            st = nodes[i][0]
            enc = cache.get(id(st.context))
            if enc is None:
                enc = cache[id(st.context)] = spec.encode_merged(st.context, context)
            rows.append(enc)
        X[:, n_base : n_base + len(spec.context_columns)] = np.repeat(
            np.array(rows, dtype=np.float64), kept_counts, axis=0
        )
    return X


def _to_float(v: Any) -> float:
    if v is None or isinstance(v, bool):
        return math.nan if v is None else float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


@dataclass(frozen=True)
class RootBlock:
    """Many users' decision points as columns: their states, clocks and encoded contexts (one
    row per user), and one ``(node, step)`` pair per candidate, users in order."""

    states: StateColumns
    now: np.ndarray
    contexts: np.ndarray
    node: np.ndarray
    step: np.ndarray
    counts: list[int]


def root_block(
    spec: FeatureSpec,
    catalog: Catalog,
    roots: Sequence[tuple[UserState, Sequence[int], float, Mapping[str, Any] | None]],
    contexts: Sequence[Sequence[float]] | None = None,
) -> RootBlock:
    """``(state, candidates, now, context)`` roots as a ``RootBlock``; ``contexts`` are the
    roots' encoded contexts when the caller has them (``FeatureSpec.encode_merged``)."""
    if contexts is None:
        contexts = [spec.encode_merged(r[0].context, r[3]) for r in roots]
    counts = [len(r[1]) for r in roots]
    node = np.repeat(np.arange(len(roots)), counts)
    states = StateColumns.from_states([r[0] for r in roots], catalog.n)
    if catalog.has_availability:  # the look-ahead must not imagine steps the user lacks
        bit = 1 << np.arange(catalog.n, dtype=object)
        masks = [catalog.available(merged_context(r[0].context, r[3])) for r in roots]
        states.unavailable = np.array([(m & bit) == 0 for m in masks], dtype=bool).reshape(
            len(roots), catalog.n
        )
    return RootBlock(
        states=states,
        now=np.array([r[2] for r in roots], dtype=np.float64),
        contexts=np.array(contexts, dtype=np.float64).reshape(
            len(roots), len(spec.context_columns)
        ),
        node=node,
        step=np.fromiter((s for r in roots for s in r[1]), dtype=np.int64, count=len(node)),
        counts=counts,
    )


def candidate_rows(
    spec: FeatureSpec,
    catalog: Catalog,
    states: StateColumns,
    now: np.ndarray,
    contexts: np.ndarray,
    node: np.ndarray,
    step: np.ndarray,
) -> np.ndarray:
    """Feature rows for offering ``step[r]`` to look-ahead node ``node[r]`` at ``now[node[r]]``.

    The columnar twin of ``candidate_block``: ``contexts`` holds each node's encoded context
    (``FeatureSpec.encode_merged``), one row per node. The numbers are the same, row for row.
    """
    n_state = len(STATE_FEATURES)
    n_base = n_state + len(CANDIDATE_FEATURES)
    X = np.empty((len(node), len(spec.names)), dtype=np.float64)
    if len(node) == 0:
        return X
    X[:, :n_state] = states.vectors(now)[node]
    _candidate_columns(
        X,
        spec,
        catalog,
        step,
        states.max_effort[node],
        states.offers[node, step],
        states.declines[node, step],
    )
    if spec.context_columns:
        X[:, n_base : n_base + len(spec.context_columns)] = contexts[node]
    return X


def _candidate_columns(
    X: np.ndarray,
    spec: FeatureSpec,
    catalog: Catalog,
    steps: np.ndarray,
    max_effort: Any,
    offers: Any,
    declines: Any,
) -> None:
    """Fill the CANDIDATE_FEATURES columns of ``X`` for the offered ``steps`` (each row's
    user's max accepted effort and offer/decline counts of that step given per row), and the
    ``step_id`` column when the spec has one."""
    col = len(STATE_FEATURES)
    arr = catalog.arrays
    eff = arr["effort"][steps]
    X[:, col] = eff
    X[:, col + 1] = arr["stage"][steps]
    X[:, col + 2] = arr["value"][steps]
    X[:, col + 3] = arr["is_goal"][steps]
    X[:, col + 4] = eff - max_effort
    X[:, col + 5] = offers
    X[:, col + 6] = declines
    if spec.step_ids:
        X[:, -1] = spec.step_codes(catalog)[steps]
