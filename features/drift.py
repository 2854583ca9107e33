"""Context drift: the training data's context distribution, and a PSI against it.

Training stores, in the model bundle's meta (``context_reference``), a small histogram of every
context column it used as a feature: the ten deciles of a numeric column, or the twenty most
frequent values of a categorical one, each with a bin for "other" and one for "missing". The
service bins each request's context with the same edges (a dict lookup or a ``bisect`` per
column, no pandas) into a sliding window, and reports the population stability index of the
window against the stored shares. Why PSI: it needs only the binned shares (a few numbers per
column, small enough for the meta), it is symmetric in where mass moved, and its usual reading
(under 0.1 stable, 0.1 to 0.25 moderate, above 0.25 a shift) is widely known to operators.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

META_KEY = "context_reference"
TOP_VALUES = 20  # categorical values kept by name; the rest share the "other" bin
QUANTILES = tuple(i / 10 for i in range(1, 10))  # numeric bin edges: the training deciles
_FLOOR = 1e-4  # a share of 0 would make PSI infinite: every share is at least this


def _number(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class ColumnReference:
    """One column's bins and the training shares of each (the last bin is "missing")."""

    name: str
    kind: str  # "numeric" | "category"
    edges: tuple[float, ...] = ()  # numeric: bisect edges
    values: tuple[str, ...] = ()  # category: the values kept by name (then "other")
    shares: tuple[float, ...] = ()

    @property
    def n_bins(self) -> int:
        return len(self.shares)

    def bin(self, value: Any) -> int:
        """The bin of one request's value (the last bin when missing or unreadable)."""
        missing = len(self.shares) - 1
        if value is None:
            return missing
        if self.kind == "numeric":
            x = _number(value)
            return missing if x is None else bisect.bisect_right(self.edges, x)
        try:
            return self.values.index(str(value))
        except ValueError:
            return len(self.values)  # "other"

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> ColumnReference:
        kind = str(data.get("kind"))
        shares = tuple(float(s) for s in data.get("shares", ()))
        if kind == "numeric":
            edges = tuple(float(e) for e in data.get("edges", ()))
            if len(shares) != len(edges) + 2:
                raise ValueError(f"column {name!r}: {len(edges)} edges need more shares")
            return cls(name, kind, edges=edges, shares=shares)
        if kind == "category":
            values = tuple(str(v) for v in data.get("values", ()))
            if len(shares) != len(values) + 2:
                raise ValueError(f"column {name!r}: {len(values)} values need more shares")
            return cls(name, kind, values=values, shares=shares)
        raise ValueError(f"column {name!r}: unknown kind {kind!r}")


def parse_reference(data: Any) -> tuple[ColumnReference, ...]:
    """The columns of a stored reference; () when there is none or it cannot be read (an older
    model simply has no drift score)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("columns"), Mapping):
        return ()
    try:
        return tuple(ColumnReference.from_json(str(c), d) for c, d in data["columns"].items())
    except (TypeError, ValueError, AttributeError):
        return ()


def psi(expected: Sequence[float], counts: Sequence[int]) -> float:
    """Population stability index of observed ``counts`` against ``expected`` shares."""
    n = sum(counts)
    if n == 0:
        return 0.0
    total = 0.0
    for e, c in zip(expected, counts, strict=True):
        e = max(e, _FLOOR)
        a = max(c / n, _FLOOR)
        total += (a - e) * math.log(a / e)
    return total


class DriftWindow:
    """The binned context of the last ``size`` requests against one reference (not thread-safe:
    the caller holds a lock)."""

    def __init__(self, columns: Sequence[ColumnReference], size: int) -> None:
        self.columns = tuple(columns)
        self.rows: deque[tuple[int, ...]] = deque(maxlen=size)
        self.counts = [[0] * c.n_bins for c in self.columns]

    def observe(self, context: Mapping[str, Any] | None) -> None:
        ctx = context or {}
        row = tuple(c.bin(ctx.get(c.name)) for c in self.columns)
        if len(self.rows) == self.rows.maxlen:
            for counts, b in zip(self.counts, self.rows[0], strict=True):
                counts[b] -= 1
        self.rows.append(row)
        for counts, b in zip(self.counts, row, strict=True):
            counts[b] += 1

    def scores(self) -> dict[str, float]:
        """PSI per column over the window."""
        return {c.name: psi(c.shares, k) for c, k in zip(self.columns, self.counts, strict=True)}
