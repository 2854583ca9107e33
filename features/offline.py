"""Vectorised point-in-time features for a whole event log (the offline twin of ``UserState``).

Sorting once by (user, ts, row) makes every user's history one contiguous run, in time order.
Each feature is then a cumulative numpy operation over the whole array that restarts at the run
boundaries (cumsum minus the run's offset; cummax on ``run_id * K + rank`` so earlier runs never
win), read at the previous event, so a row sees only the state *before* it, without a Python loop
per row and without pandas group-bys (which were most of the time and memory on large logs).
``tests/features/test_parity.py`` proves the result equals folding each user's history with
``UserState.apply``; ``tests/features/test_offline_paths.py`` covers the special-case paths.

Speed and memory choices, for logs of tens of millions of rows (pandas group-bys, ``Series.map``
and a three-key ``lexsort`` made the first version 3x slower than one pandas group-by and
needed 7 GiB for 10M rows):

* User ids (pandas ``str``, Arrow-backed) are grouped by hashing their bytes in numpy and
  factorising the 64-bit hashes, verified exactly; steps and context values are factorised once
  (few distinct values) and looked up in small tables; outcomes are compared once.
* The (user, ts, row) order comes from two ``np.sort`` passes (time, then user) over int64 keys
  with the row position packed into the low bits: sorting values is several times faster than
  ``argsort`` and unique keys make it exactly a stable sort. Whole-second (or ms, us) timestamps
  become integer keys directly; others are ranked by a stable argsort first.
* Results are built in the sorted order, a slice of whole user runs at a time (small
  temporaries: fresh memory is costly, page faults were a third of the time), into two narrow
  blocks (counts and ranks as int16 when every user has fewer than 32768 events, else int32;
  float64 values), then brought back to the original row order by one ``np.take`` row gather
  per block and chunk of rows, written straight into the preallocated output: scattering column
  by column into a row-major matrix touches a cache line per value and was several times slower.
* ``value_received`` is a float sum. When every catalog value is a multiple of a power of two
  small enough that no partial sum can round (integers, halves: the usual case) it is an exact
  integer cumsum; otherwise it is pandas' group-wise cumsum as before (which compensates
  rounding, so it may differ from the online fold's plain sum in the last bits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.catalog import Catalog
from features.spec import FeatureSpec
from features.state import ACCEPTED, DROPPED, HOUR

_CHUNK = 1 << 14  # rows per chunk when gathering back to the original order
_SORTED_CHUNK = 1 << 19  # rows (rounded up to whole runs) per slice of the sorted work
_MAX_EXACT = 1 << 53  # integers up to this are exact in float64


@dataclass
class OfflineFeatures:
    """Feature matrix in the ORIGINAL row order of the frame, plus what training needs."""

    X: np.ndarray  # (n_rows, n_features) float64
    accepted: np.ndarray  # (n_rows,) bool: the offer's outcome was 'accepted'
    dropped: np.ndarray  # (n_rows,) bool: 'dropped'
    came_back: np.ndarray  # (n_rows,) bool: the user has a later event
    step_index: np.ndarray  # (n_rows,) int: catalog position of the offered step
    ts: np.ndarray  # (n_rows,) float epoch seconds
    names: list[str]

    def subset(self, rows: np.ndarray) -> OfflineFeatures:
        """The features of some rows (a boolean mask or indices), in that order."""
        return OfflineFeatures(
            X=self.X[rows],
            accepted=self.accepted[rows],
            dropped=self.dropped[rows],
            came_back=self.came_back[rows],
            step_index=self.step_index[rows],
            ts=self.ts[rows],
            names=self.names,
        )


def build_offline_features(
    frame: pd.DataFrame, catalog: Catalog, spec: FeatureSpec
) -> OfflineFeatures:
    """Point-in-time features for every row of a validated event frame.

    ``frame`` needs ``user_id``, ``ts`` (epoch seconds), ``step``, ``outcome`` and the spec's
    context columns; a ``row`` column breaks ties of equal timestamps (file order otherwise).
    """
    n = len(frame)
    names = spec.names
    n_ctx = len(spec.context_columns)
    assert len(names) == 19 + n_ctx + bool(spec.step_ids), "the X column layout below is fixed"
    ts_all = frame["ts"].to_numpy(dtype=np.float64)
    step = _step_codes(frame["step"], catalog)  # original order, like everything not named _s
    acc = _equals(frame["outcome"], ACCEPTED)
    dropped = _equals(frame["outcome"], DROPPED)
    if n == 0:
        empty = np.empty((0, len(names)), dtype=np.float64)
        return OfflineFeatures(empty, acc, dropped, np.zeros(0, bool), step, ts_all, names)

    it = np.int32 if n < 2**31 - 1 else np.int64  # row positions and counts
    tie = frame["row"].to_numpy() if "row" in frame.columns else None
    order, users_s = _event_order(_user_codes(frame["user_id"]), ts_all, tie)
    start = np.empty(n, dtype=bool)  # first row of a user's run, in the sorted order
    start[0] = True
    np.not_equal(users_s[1:], users_s[:-1], out=start[1:])
    del users_s
    run_starts = np.flatnonzero(start)

    # Per-row inputs in the original order, encoded once; lookup tables per step.
    tables = _Tables.of(catalog, step, acc)
    step_small = step.astype(tables.step_dtype)
    context = [
        _category_codes(frame[c], spec.categories[c], spec.other_code(c))
        if spec.categories.get(c) is not None
        else _numbers(frame[c])
        for c in spec.context_columns
    ]

    # Sorted blocks (see _fill_sorted), filled a slice of whole runs at a time so that every
    # temporary is small, reused by the allocator and cache-resident.
    longest_run = int(np.diff(run_starts, append=n).max())
    narrow = np.int16 if longest_run < 2**15 else it  # every count is below the run length
    iblock = np.empty((n, 10), dtype=narrow)
    fblock = np.empty((n, 5 + len(context)), dtype=np.float64)
    c0 = 0
    while c0 < n:
        k = int(np.searchsorted(run_starts, c0 + _SORTED_CHUNK))
        c1 = int(run_starts[k]) if k < len(run_starts) else n
        _fill_sorted(
            iblock[c0:c1],
            fblock[c0:c1],
            order[c0:c1],
            start[c0:c1],
            acc,
            step_small,
            ts_all,
            context,
            tables,
        )
        c0 = c1
    del start, run_starts, context, step_small

    # -- back to the original order: one row gather per block and chunk ------------------------
    inv = np.empty(n, dtype=it)
    inv[order] = np.arange(n, dtype=it)
    del order
    X = np.empty((n, len(names)), dtype=np.float64)
    came_back = np.empty(n, dtype=bool)
    ibuf = np.empty((min(n, _CHUNK), iblock.shape[1]), dtype=narrow)
    fbuf = np.empty((min(n, _CHUNK), fblock.shape[1]), dtype=np.float64)
    for r0 in range(0, n, _CHUNK):
        r1 = min(n, r0 + _CHUNK)
        ib = np.take(iblock, inv[r0:r1], axis=0, out=ibuf[: r1 - r0])  # not iblock[...]: slower
        fb = np.take(fblock, inv[r0:r1], axis=0, out=fbuf[: r1 - r0])
        x = X[r0:r1]
        x[:, 0:5] = ib[:, 0:5]
        x[:, 5] = tables.levels[ib[:, 8]]
        x[:, 6] = fb[:, 0]
        x[:, 7] = ib[:, 9]
        x[:, 8:12] = fb[:, 1:5]
        x[:, 12:16] = tables.candidate[step[r0:r1]]
        np.subtract(x[:, 12], x[:, 5], out=x[:, 16])
        x[:, 17:19] = ib[:, 5:7]
        np.not_equal(ib[:, 7], 0, out=came_back[r0:r1])
        x[:, 19 : 19 + n_ctx] = fb[:, 5:]
    if spec.step_ids:
        X[:, -1] = spec.step_codes(catalog)[step]
    return OfflineFeatures(
        X=X,
        accepted=acc,
        dropped=dropped,
        came_back=came_back,
        step_index=step,
        ts=ts_all,
        names=names,
    )


@dataclass
class _Tables:
    """Per-step lookup tables for one catalog (and how to sum values exactly)."""

    step_dtype: type[np.signedinteger]  # small integer type for step codes and ranks
    levels: np.ndarray  # distinct efforts and 0.0, ascending: max_effort is levels[rank]
    effort_rank: np.ndarray  # per step
    zero_rank: int  # rank of 0.0, the max_effort before any accept
    stage_rank: np.ndarray  # per step: stage index + 1 (0: stage_reached -1)
    values: np.ndarray  # per step, float64
    value_ints: np.ndarray | None  # per step, values * 2**value_shift when sums are exact
    value_shift: int
    candidate: np.ndarray  # (n_steps, 4): X columns 12-15 (effort, stage, value, is_goal)

    @classmethod
    def of(cls, catalog: Catalog, step: np.ndarray, acc: np.ndarray) -> _Tables:
        small = np.int16 if catalog.n < 2**15 else np.int32
        efforts = np.asarray(catalog.efforts, dtype=np.float64)
        levels = np.unique(np.append(efforts, 0.0))
        values = [float(v) for v in catalog.values]
        value_ints, shift = None, 0
        scaled = _scaled_ints(values)
        if scaled is not None:
            counts = np.bincount(step[acc], minlength=catalog.n)
            if sum(int(c) * abs(m) for c, m in zip(counts, scaled[1], strict=True)) < _MAX_EXACT:
                # no partial sum of any user can round: integer sums are the exact float sums
                shift, value_ints = scaled[0], np.asarray(scaled[1], dtype=np.int64)
        goal = [float((catalog.goal_mask >> i) & 1) for i in range(catalog.n)]
        return cls(
            step_dtype=small,
            levels=levels,
            effort_rank=np.searchsorted(levels, efforts).astype(small),
            zero_rank=int(np.searchsorted(levels, 0.0)),
            stage_rank=np.asarray(catalog.stage_indices, dtype=small) + 1,
            values=np.asarray(values, dtype=np.float64),
            value_ints=value_ints,
            value_shift=shift,
            candidate=np.column_stack([efforts, catalog.stage_indices, values, goal]).astype(
                np.float64
            ),
        )


def _fill_sorted(
    iblock: np.ndarray,
    fblock: np.ndarray,
    rows: np.ndarray,
    start: np.ndarray,
    acc: np.ndarray,
    step: np.ndarray,
    ts: np.ndarray,
    context: list[np.ndarray],
    t: _Tables,
) -> None:
    """Fill the blocks for a slice of the sorted order made of whole user runs.

    ``rows`` are the original positions of the slice's rows, ``start`` marks run starts;
    ``acc``, ``step``, ``ts`` and ``context`` are per original row.
    int block: X columns 0-4 (asks, accepts, declines, consecutive accepts / declines),
    17-18 (earlier offers and declines of this step), has_next, the rank of max effort in
    ``t.levels`` (X column 5) and stage reached (X column 7).
    float block: X columns 6 (value received) and 8-11 (time features), then the context
    columns (category codes as floats, NaN when unknown or missing).
    """
    m = len(rows)
    idx = np.arange(m, dtype=np.int32 if m < 2**31 else np.int64)
    gs = np.maximum.accumulate(np.where(start, idx, 0))  # index of the run's first row
    pos = idx - gs  # earlier events of this user
    acc_s = acc[rows]
    step_s = step[rows]

    iblock[:, 0] = pos
    iblock[:, 1] = _before_in_run(acc_s.astype(idx.dtype), gs)
    np.subtract(pos, iblock[:, 1], out=iblock[:, 2])
    run = _signed_run_before(acc_s, start, idx)
    np.maximum(run, 0, out=iblock[:, 3])
    np.negative(run, out=run)
    np.maximum(run, 0, out=iblock[:, 4])
    del run
    iblock[:, 5], iblock[:, 6] = _step_counts(step_s, ~acc_s, gs)
    iblock[:-1, 7] = ~start[1:]
    iblock[-1, 7] = 0  # the slice ends with a whole run

    best = np.where(acc_s, t.effort_rank[step_s], t.zero_rank)
    iblock[:, 8] = _max_before_in_run(best, start, len(t.levels), t.zero_rank)
    k = int(t.stage_rank.max(initial=0)) + 1
    iblock[:, 9] = _max_before_in_run(np.where(acc_s, t.stage_rank[step_s], 0), start, k, 0)
    iblock[:, 9] -= 1
    fblock[:, 0] = _value_received(t, step_s, acc_s, gs)
    _time_features(ts[rows], gs, pos, fblock[:, 1:5])
    for j, col in enumerate(context):
        x_s = col[rows]
        if x_s.dtype.kind == "f":  # numbers: NaN is missing
            fblock[:, 5 + j] = _ffill(x_s, ~np.isnan(x_s), idx, gs, np.nan)
        else:  # category codes: -1 missing, -2 a value the spec does not know (NaN)
            x_s = _ffill(x_s, x_s != -1, idx, gs, -1)
            fblock[:, 5 + j] = np.where(x_s >= 0, x_s, np.nan)


def _time_features(ts_s: np.ndarray, gs: np.ndarray, pos: np.ndarray, out: np.ndarray) -> None:
    """Hours since the first and the last event, mean and last gap (NaN when undefined)."""
    first = ts_s[gs]
    out[0, 1:3] = np.nan
    out[:2, 3] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        np.subtract(ts_s, first, out=out[:, 0])
        np.subtract(ts_s[1:], ts_s[:-1], out=out[1:, 1])  # minus the previous event's ts
        np.subtract(ts_s[:-1], first[1:], out=out[1:, 2])
        np.subtract(ts_s[1:-1], ts_s[:-2], out=out[2:, 3])
        del first
        out /= HOUR
        out[:, 2] /= pos - 1
    out[pos == 0, 0:2] = np.nan
    out[pos <= 1, 2:4] = np.nan


def _step_codes(col: pd.Series, catalog: Catalog) -> np.ndarray:
    """Catalog positions (int64) of the offered steps, through one factorisation."""
    codes, uniques = pd.factorize(col, sort=False)
    lut = np.array([catalog.index.get(u, -1) for u in uniques] + [-1], dtype=np.int64)
    step = lut[codes]
    if len(step) and step.min() < 0:
        unknown = sorted({str(u) for u in uniques if u not in catalog.index})
        raise ValueError(f"steps not in the catalog: {unknown[:5]}")
    return step


def _equals(col: pd.Series, value: str) -> np.ndarray:
    return (col == value).to_numpy(dtype=bool, na_value=False)


def _user_codes(col: pd.Series) -> np.ndarray:
    """Integer code per row, equal for equal user ids (-1 for a missing id), like factorize.

    Hashing an Arrow string column's bytes in numpy and factorising the 64-bit hashes is about
    twice as fast as factorising the strings; the grouping is then verified exactly
    (every row has the length and bytes of its code's first row), and any doubt falls back
    to ``pd.factorize``."""
    codes = _hashed_text_codes(col)
    if codes is None:
        codes, _ = pd.factorize(col, sort=False)
    return codes


def _hashed_text_codes(col: pd.Series, max_len: int = 64) -> np.ndarray | None:
    if not isinstance(col.dtype, pd.StringDtype) or col.dtype.storage != "pyarrow":
        return None
    import pyarrow as pa

    chunked = col.array.__arrow_array__()
    arr = chunked.chunk(0) if chunked.num_chunks == 1 else chunked.combine_chunks()
    if arr.null_count or not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return None
    n = len(arr)
    width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(arr.buffers()[1], dtype=width)[arr.offset : arr.offset + n + 1]
    lens = np.diff(offsets).astype(np.int64)
    longest = int(lens.max(initial=0))
    if longest > max_len:
        return None
    lo, hi = int(offsets[0]), int(offsets[-1])
    data = np.zeros(hi - lo + longest + 8, dtype=np.uint8)  # zero padding past the end
    if hi > lo:  # (an array of empty strings may have no data buffer)
        data[: hi - lo] = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[lo:hi]
    # the 8 bytes starting at every byte offset, as one little-endian integer
    words = np.ndarray(shape=(hi - lo + longest + 1,), dtype="<u8", buffer=data, strides=(1,))
    starts = offsets[:-1].astype(np.int64) - lo
    masks = np.array([(1 << (8 * i)) - 1 for i in range(8)] + [2**64 - 1], dtype=np.uint64)
    h = lens.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    chunks = []
    for k in range(0, longest, 8):
        w = words[starts + k] & masks[np.clip(lens - k, 0, 8)]
        chunks.append(w)
        h ^= w
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
    del starts, data, words
    codes, uniques = pd.factorize(h, sort=False)
    del h
    first = np.empty(len(uniques), dtype=np.int64)
    first[codes[::-1]] = np.arange(n - 1, -1, -1)  # first row of every code
    rep = first[codes]
    del first
    if not np.array_equal(lens[rep], lens):
        return None
    for w in chunks:
        if not np.array_equal(w[rep], w):
            return None  # a hash collision: never seen, but then be exact the slow way
    return codes


def _event_order(
    user_codes: np.ndarray, ts: np.ndarray, tie: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Permutation sorting rows by (user, ts, tie), rows equal in all three in file order, and
    the (shifted) user code of each sorted row.

    Two passes, time then user, each a plain ``np.sort`` of a key with the row position packed
    into its low bits: sorting values is several times faster than ``argsort``, and a unique key
    makes the order exactly that of a stable sort."""
    n = len(ts)
    codes = user_codes.astype(np.int64)
    codes += 1  # a missing id (code -1) is a user of its own, as it always was
    if tie is not None and not bool(np.all(tie[1:] >= tie[:-1])):
        order = np.lexsort((tie, ts, codes))
        return order, codes[order]
    # From here file order breaks ties: it agrees with ``tie`` (non-decreasing).
    bits = max(1, (n - 1).bit_length())
    low = (1 << bits) - 1
    tkey = _integer_times(ts)
    if tkey is not None and int(tkey.max()).bit_length() + bits <= 63:
        tkey <<= bits
        tkey |= np.arange(n, dtype=np.int64)
        tkey.sort()
        tkey &= low
        by_time = tkey
    else:
        by_time = np.argsort(ts, kind="stable")
    key = codes[by_time]
    del codes
    if int(key.max()).bit_length() + bits > 63:
        o = np.argsort(key, kind="stable")
        return by_time[o], key[o]
    key <<= bits
    key |= np.arange(n, dtype=np.int64)
    key.sort()
    order = by_time[key & low]
    key >>= bits
    return order, key


def _integer_times(ts: np.ndarray) -> np.ndarray | None:
    """Non-negative int64 keys with the order and ties of ``ts``, when the timestamps are whole
    seconds, milliseconds or microseconds; ``None`` otherwise."""
    lo, hi = float(ts.min()), float(ts.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    for scale in (1.0, 1e3, 1e6):
        # below 2**52 / scale, distinct multiples of 1 / scale are distinct floats
        if max(abs(lo), abs(hi)) * scale >= 2**52:
            return None
        m = np.rint(ts * scale) if scale != 1.0 else np.floor(ts)
        if np.array_equal(m / scale if scale != 1.0 else m, ts):
            m -= np.rint(lo * scale)
            return m.astype(np.int64)
    return None


def _before_in_run(x: np.ndarray, gs: np.ndarray) -> np.ndarray:
    """Sum of ``x`` over the earlier rows of each row's run (integer, exact)."""
    c = np.cumsum(x, dtype=x.dtype)
    c -= x  # strictly before, counted from the first row of the array
    return c - c[gs]


def _signed_run_before(acc_s: np.ndarray, start: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Length of the run of equal outcomes ending at the previous event of the same user:
    positive for accepts, negative for declines, 0 on a user's first row."""
    brk = start.copy()
    brk[1:] |= acc_s[1:] != acc_s[:-1]
    run = idx - np.maximum.accumulate(np.where(brk, idx, 0)) + 1  # run ending at each row
    del brk
    out = np.empty_like(run)
    out[0] = 0
    out[1:] = np.where(acc_s[:-1], run[:-1], -run[:-1])
    out[start] = 0
    return out


def _max_before_in_run(rank: np.ndarray, start: np.ndarray, k: int, fill: int) -> np.ndarray:
    """Maximum of ``rank`` (in ``[0, k)``) over the earlier rows of each row's run, ``fill``
    on a run's first row. Offsetting run ``r`` by ``r * k`` lets one global running maximum
    restart at every run, as no earlier run can exceed it."""
    n_runs = int(np.count_nonzero(start))
    dt = np.int32 if n_runs * k < 2**31 else np.int64
    offset = np.cumsum(start, dtype=dt)
    offset -= 1
    offset *= k
    key = rank.astype(dt)
    key += offset
    np.maximum.accumulate(key, out=key)
    key -= offset
    del offset
    out = np.empty_like(key)
    out[0] = fill
    out[1:] = key[:-1]
    out[start] = fill
    return out


def _step_counts(
    step_s: np.ndarray, dec_s: np.ndarray, gs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Earlier offers and declines of the same step by the same user, per row.

    A stable sort by step (a radix sort for small integer codes) keeps each user's rows in time
    order within a step, so each (user, step) pair becomes a run."""
    n = len(step_s)
    p = np.argsort(step_s, kind="stable")  # a radix sort for int16 codes
    g = gs[p]
    s = step_s[p]
    brk = np.empty(n, dtype=bool)
    brk[0] = True
    brk[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    del g, s
    k = np.arange(n, dtype=gs.dtype)
    first = np.maximum.accumulate(np.where(brk, k, 0))
    del brk
    offers = np.empty(n, dtype=gs.dtype)
    offers[p] = k - first
    del k
    declines = np.empty(n, dtype=gs.dtype)
    declines[p] = _before_in_run(dec_s[p].astype(gs.dtype), first)
    return offers, declines


def _value_received(
    t: _Tables, step_s: np.ndarray, acc_s: np.ndarray, gs: np.ndarray
) -> np.ndarray:
    """Sum of accepted values over each row's earlier events (sorted order)."""
    if t.value_ints is not None:
        out = _before_in_run(np.where(acc_s, t.value_ints[step_s], 0), gs).astype(np.float64)
        return np.ldexp(out, -t.value_shift, out=out) if t.value_shift else out
    # General values: pandas' group-wise (compensated) cumsum, shifted by one event.
    incl = pd.Series(np.where(acc_s, t.values[step_s], 0.0)).groupby(gs).cumsum().to_numpy()
    out = np.empty_like(incl)
    out[0] = 0.0
    out[1:] = incl[:-1]
    out[gs == np.arange(len(gs))] = 0.0
    return out


def _scaled_ints(values: Sequence[float]) -> tuple[int, list[int]] | None:
    """``(k, [v * 2**k])`` when every value is an integer multiple of ``2**-k`` (k <= 60)."""
    k = 0
    for v in values:
        if not math.isfinite(v):
            return None
        k = max(k, v.as_integer_ratio()[1].bit_length() - 1)
    if k > 60:
        return None
    return k, [int(math.ldexp(v, k)) for v in values]


def _category_codes(col: pd.Series, cats: Sequence[str], other: int | None = None) -> np.ndarray:
    """Per-row category position (int32): -1 for missing; a value not in ``cats`` gets
    ``other`` (a pooled column's "other" category), else -2 (unknown: NaN)."""
    out = _raw_category_codes(col, cats)
    if other is not None:
        out[out == -2] = other
    return out


def _raw_category_codes(col: pd.Series, cats: Sequence[str]) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(cats)}
    dtype = col.dtype
    infer = pd.api.types.infer_dtype
    if (
        isinstance(dtype, pd.StringDtype)
        or (isinstance(dtype, pd.CategoricalDtype) and infer(dtype.categories) == "string")
        or (pd.api.types.is_object_dtype(dtype) and infer(col, skipna=True) in ("string", "empty"))
    ):  # all text: encode the few distinct values, not every row
        codes, uniques = pd.factorize(col, sort=False)
        lut = np.array([lookup.get(str(u), -2) for u in uniques] + [-1], dtype=np.int32)
        return lut[codes]
    as_str = pd.Series(col.to_numpy(), dtype=object)
    mask = as_str.isna()
    codes = pd.Categorical(as_str.where(mask, as_str.astype(str)), categories=list(cats)).codes
    out = codes.astype(np.int32)
    out[(out < 0) & ~mask.to_numpy()] = -2
    return out


def _numbers(col: pd.Series) -> np.ndarray:
    if col.dtype == np.float64:
        return col.to_numpy()
    return pd.to_numeric(pd.Series(col.to_numpy()), errors="coerce").to_numpy(dtype=np.float64)


def _ffill(
    x_s: np.ndarray, present: np.ndarray, idx: np.ndarray, gs: np.ndarray, missing: float
) -> np.ndarray:
    """Latest present value within each row's run, including the row itself."""
    last = np.maximum.accumulate(np.where(present, idx, -1))
    return np.where(last >= gs, x_s[last], missing)


def typical_gap_hours(frame: pd.DataFrame, rows: np.ndarray | None = None) -> float:
    """Median gap in hours between a user's consecutive events (24 when nobody returns): the
    spacing at which the planner imagines a user's later visits. One definition for ``train``
    and the simulated bundles, so that a benchmark measures the planner ``train`` serves."""
    f = frame if rows is None else frame.loc[rows]
    codes, _ = pd.factorize(f["user_id"], sort=False)
    ts = f["ts"].to_numpy(dtype=np.float64)
    order = np.lexsort((ts, codes))
    c, t = codes[order], ts[order]
    same = c[1:] == c[:-1]
    gaps = (t[1:] - t[:-1])[same]
    return float(np.median(gaps) / 3600.0) if len(gaps) else 24.0
