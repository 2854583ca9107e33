"""``nextstep train|predict|recommend --dask local|ADDRESS``: the same work on a Dask cluster.

Nothing here re-implements the data contract or the features; it distributes them:

1. **Read** the log with ``dask.dataframe`` (``from_map``, one partition per file) from a
   directory of Parquet or CSV files, a glob, or a single file. Each file is read by the same
   reader ``load_events`` uses; CSV context columns stay text until every file has been seen,
   then become numbers only when *every* value in the whole log is one (the single-file rule).
2. **Shuffle by ``user_id``** so each user's rows live in one partition, then validate each
   partition with ``features.events``' own validator (the "offer after conversion" check needs
   the whole user) and build point-in-time features with ``build_offline_features``
   (``map_partitions``): one feature implementation for both engines. Rows carry a global key
   (file index, row in file) so ties of equal ``ts`` break in file order, as on one machine,
   and an error names the file and its row.
3. **Holdout** exactly as on one machine (``training.holdout``): a calendar cut (offers at or
   after it are held out; the cut comes from the log's time range) or, with ``arrival``, whole
   users, latest arrival by first event (ties by first appearance). Only per-user
   ``(first ts, first key, rows)`` travel to the client; the split is then one threshold.
4. **Fit** the readiness, drop and come-back models with ``lightgbm.dask.DaskLGBMClassifier``
   (the parameters of ``models.readiness.ReadinessModel``), convert each to a local booster
   (``to_local``) and calibrate it with isotonic regression on a held-out slice of its training
   rows, as ``ReadinessModel.fit`` does; the logistic baseline is fitted on a sample of at most
   ``LOGREG_MAX_ROWS`` training rows. The result is an ordinary ``ModelBundle``.
5. **Log and register** through ``training.pipeline.log_training``: the same run, params
   (plus ``engine=dask``), metrics, plots, artifacts, registered version and promotion gate. The
   data fingerprint is the same SHA-256 as on one machine for the same rows in the same order.

What reaches the client: per-user arrival statistics, the holdout's outcomes and predictions
(for the metrics and plots), a bounded sample for the baseline, the holdout artifact (at most
``HOLDOUT_ARTIFACT_ROWS`` rows) and one 8-byte hash per row for the fingerprint. The rest stays on
the workers. Paths must be readable by the client and every worker (a shared volume).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import hashlib
import io
import json
import logging
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from evaluation import evaluate as ev
from features.catalog import Catalog
from features.drift import META_KEY as DRIFT_META_KEY
from features.errors import EventLogError, NextstepError
from features.events import (
    REASONS,
    STR_DTYPE,
    context_columns,
    file_kind,
    read_csv,
    read_csv_header,
    read_parquet,
    validate_frame,
)
from features.spec import FeatureSpec, context_facts, merge_facts
from features.timeutil import iso_seconds
from models.bundle import ModelBundle, ModelScorer
from models.decide import Decider
from models.policies import PolicyConfig
from models.readiness import LogisticBaseline, ReadinessModel, readiness_monotone
from training.context_reference import context_reference
from training.holdout import Holdout, check_sides
from training.pipeline import (
    DEFAULT_READINESS,
    HOLDOUT_ARTIFACT_ROWS,
    ChampionScore,
    TrainingOutcome,
    catalog_hash,
    features_for,
    log_training,
    score_champion,
)
from training.recommend import OUTPUT_COLUMNS, recommend_frame
from training.truth import TRUTH_COLUMN, feature_context_columns

log = logging.getLogger("nextstep.dask")

LOCAL_WORKERS = 2
KEY_BITS = 40  # global row key = file index << KEY_BITS | 1-based row in that file
LOGREG_MAX_ROWS = 300_000
GAP_EXACT_ROWS = 20_000_000
_SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz")
_META_COLS = ("_key", "_bad")
Progress = Callable[[str], None]


F = TypeVar("F", bound=Callable[..., Any])


def on_cluster(fn: F) -> F:
    """Run ``fn`` with its cluster's client as the current one and the validator's dtypes.

    * Every ``compute`` goes through the client that persisted the data (the first argument, a
      ``Client`` or a ``DaskLog``): with several clients in one process (a notebook's own, a
      test's), dask would otherwise pick the newest, which may not know those keys yet.
    * Text columns stay object dtype, as on one machine: dask's automatic conversion to Arrow
      strings would change the data fingerprint and what the feature builder sees."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import dask

        first = args[0] if args else None
        client = first.client if isinstance(first, DaskLog) else first
        current = client.as_current() if hasattr(client, "as_current") else contextlib.nullcontext()
        with current, dask.config.set({"dataframe.convert-string": False}):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# -- the cluster ------------------------------------------------------------------------------
@contextlib.contextmanager
def dask_client(address: str) -> Iterator[Any]:
    """A ``distributed.Client``: ``local`` (or ``local:N``) starts a ``LocalCluster`` of N
    single-threaded worker processes (default 2) without dashboards; anything else is the
    address of a running scheduler (``tcp://host:8786``)."""
    import dask
    from distributed import Client, LocalCluster

    spec = (address or "").strip()
    if not spec:
        raise NextstepError("--dask needs 'local' or a scheduler address")
    m = re.fullmatch(r"local(?::(\d+))?", spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if m:
            n = int(m.group(1) or LOCAL_WORKERS)
            if n < 1:
                raise NextstepError("--dask local:N needs N >= 1")
            cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,  # LightGBM's network layer is per process: one worker each
                dashboard_address=None,
                worker_dashboard_address=None,
                silence_logs=logging.ERROR,
            )
            client = Client(cluster)
        else:
            cluster = None
            try:
                client = Client(spec, timeout="20s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise NextstepError(
                    f"cannot reach the Dask scheduler at {spec!r} ({type(exc).__name__}: {exc})"
                ) from None
    if cluster is not None:
        # LightGBM's network set-up prints to the C stdout of the workers: not our output
        client.run(_silence_stdout)
    try:
        with client.as_current(), dask.config.set({"dataframe.convert-string": False}):
            yield client  # see ``on_cluster``
    finally:
        with contextlib.suppress(Exception):
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()


def _silence_stdout() -> None:
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


# -- reading -----------------------------------------------------------------------------------
def event_files(events: str | Path) -> tuple[list[str], str]:
    """``(files, kind)`` of a directory (every ``*.parquet|*.pq|*.csv|*.csv.gz`` in it, sorted,
    recursively, hidden and ``_``-prefixed files skipped), a glob or a single file."""
    source = str(events)
    p = Path(source)
    if any(ch in source for ch in "*?["):
        files = sorted(glob.glob(source, recursive=True))
    elif p.is_dir():
        files = sorted(
            str(f)
            for f in p.rglob("*")
            if f.is_file()
            and f.name.lower().endswith(_SUFFIXES)
            and not any(part.startswith((".", "_")) for part in f.relative_to(p).parts)
        )
    elif p.exists():
        files = [source]
    else:
        raise EventLogError("file not found", source=source)
    if not files:
        raise EventLogError(
            "no event files found (expected .parquet, .pq, .csv or .csv.gz files)", source=source
        )
    kinds = {file_kind(Path(f), f) for f in files}
    if len(kinds) > 1:
        raise EventLogError("mixes CSV and Parquet files; use one format", source=source)
    return files, kinds.pop()


def _file_columns(path: str, kind: str) -> list[str]:
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except Exception as exc:
            raise EventLogError(f"not a readable Parquet file ({exc})", source=path) from None
    return read_csv_header(Path(path), path)


def _raw_meta(files: list[str], kind: str, columns: list[str]) -> pd.DataFrame:
    """The empty frame ``_read_file`` returns for these files (dtypes of the first file)."""
    if kind == "csv":
        meta = pd.DataFrame({c: pd.Series([], dtype=STR_DTYPE) for c in columns})
    else:
        import tempfile

        import pyarrow.parquet as pq

        schema = pq.read_schema(files[0])
        with tempfile.TemporaryDirectory() as tmp:
            empty = Path(tmp) / "empty.parquet"
            pq.write_table(schema.empty_table(), empty)
            meta = read_parquet(empty, files[0])
    return meta.assign(_key=pd.Series([], dtype=np.int64), _bad=pd.Series([], dtype=bool))


def _read_file(
    item: tuple[int, str], kind: str, names: Sequence[str], skip_invalid: bool
) -> pd.DataFrame:
    """One file as a raw frame plus ``_key`` (global row key) and ``_bad`` (a placeholder row
    for each malformed CSV line skipped with ``--skip-invalid``, counted at validation)."""
    index, path = item
    if kind == "csv":
        df, rows, n_bad = read_csv(Path(path), path, skip_invalid, infer_context=False)
    else:
        df, rows, n_bad = read_parquet(Path(path), path), None, 0
    if list(df.columns) != list(names):
        if sorted(df.columns) != sorted(names):
            raise EventLogError(
                f"columns differ from the first file's ({', '.join(names)}): "
                f"found {', '.join(map(str, df.columns))}",
                source=path,
            )
        df = df[list(names)]
    pos = np.arange(1, len(df) + 1, dtype=np.int64) if rows is None else rows.astype(np.int64)
    df = df.assign(_key=(np.int64(index) << KEY_BITS) | pos, _bad=False)
    if n_bad:
        pad = pd.DataFrame({c: pd.Series([None] * n_bad, dtype=df[c].dtype) for c in names})
        pad = pad.assign(_key=np.int64(index) << KEY_BITS, _bad=True)
        df = pd.concat([df, pad], ignore_index=True)
    return df.reset_index(drop=True)


def _decode_key(key: int, files: Sequence[str]) -> tuple[str, int]:
    return files[int(key) >> KEY_BITS], int(key) & ((1 << KEY_BITS) - 1)


# -- validation --------------------------------------------------------------------------------
_NO_VALID = re.compile(r"^no valid rows left after skipping \d+ \((?P<detail>.*)\)$")


def _castability(s: pd.Series) -> tuple[int, int, bool, bool]:
    """``(rows, non-null, all int64, all float64)`` of a text context column (the pyarrow casts
    ``features.events._infer_context`` tries, over one partition)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pa.array(s.astype(object), type=pa.string(), from_pandas=True)
    present = len(arr) - arr.null_count
    ok = {}
    for name, typ in (("int", pa.int64()), ("float", pa.float64())):
        try:
            pc.cast(arr, typ)
            ok[name] = True
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            ok[name] = False
    return len(arr), present, ok["int"], ok["int"] or ok["float"]


def _validate_part(
    raw: pd.DataFrame,
    catalog: Catalog,
    files: Sequence[str],
    source: str,
    kind: str,
    context: Sequence[str],
    skip_invalid: bool,
) -> tuple[pd.DataFrame | None, dict[str, Any]]:
    """Validate one shuffled partition (whole users) with the single-machine validator.

    Returns the validated frame (``row`` = global key, file order) and statistics: skipped rows
    per reason, CSV castability of the context columns, rows, ts range and per-user arrival
    ``(first ts, first key, rows)`` for the holdout."""
    raw = raw.sort_values("_key", kind="stable")
    bad = raw["_bad"].to_numpy(dtype=bool)
    raw = raw.loc[~bad]
    stats: dict[str, Any] = {"skipped": {}, "rows": 0, "raw_rows": len(raw), "context": {}}
    if bad.any():
        stats["skipped"]["malformed_row"] = int(bad.sum())
    if kind == "csv":
        stats["context"] = {c: _castability(raw[c]) for c in context}
    else:
        stats["context"] = {c: (len(raw), int(raw[c].notna().sum()), False, False) for c in context}
    if raw.empty:
        return None, stats
    keys = raw["_key"].to_numpy(dtype=np.int64)
    body = raw.drop(columns=list(_META_COLS)).reset_index(drop=True)
    try:
        valid = validate_frame(body, catalog, source=source, skip_invalid=skip_invalid, rows=keys)
    except EventLogError as exc:
        m = _NO_VALID.match(exc.message)
        if skip_invalid and m:  # every row of this partition is invalid: count them, keep going
            for part in m.group("detail").split(", "):
                reason, count = part.rsplit(" ", 1)
                stats["skipped"][reason] = stats["skipped"].get(reason, 0) + int(count)
            return None, stats
        raise _relocate(exc, files) from None
    for reason, count in valid.skipped.items():
        stats["skipped"][reason] = stats["skipped"].get(reason, 0) + count
    frame = valid.frame
    ts = frame["ts"].to_numpy(dtype=np.float64)
    users = frame.groupby("user_id", sort=False).agg(
        first_ts=("ts", "min"), first_key=("row", "min"), n=("row", "size")
    )
    stats.update(
        rows=len(frame),
        ts_min=float(ts.min()),
        ts_max=float(ts.max()),
        dtypes={c: str(frame[c].dtype) for c in context},
        users=(
            users["first_ts"].to_numpy(dtype=np.float64),
            users["first_key"].to_numpy(dtype=np.int64),
            users["n"].to_numpy(dtype=np.int64),
        ),
    )
    return frame, stats


def _relocate(exc: EventLogError, files: Sequence[str]) -> EventLogError:
    """Turn a global row key in an error back into (file, row in that file)."""
    if exc.row is None:
        return exc
    path, row = _decode_key(exc.row, files)

    def local(m: re.Match[str]) -> str:
        p, r = _decode_key(int(m.group(1)), files)
        return f"at row {r}" if p == path else f"at row {r} of {p}"

    message = re.sub(r"at row (\d+)", local, exc.message)
    return EventLogError(message, source=path, row=row, column=exc.column)


def _context_plan(
    stats: Sequence[Mapping[str, Any]], context: Sequence[str], kind: str
) -> dict[str, str]:
    """Final dtype of each context column over the whole log: what ``load_events`` would give
    one file holding every row (``int64``, ``float64``, or ``keep``: leave as validated)."""
    plan: dict[str, str] = {}
    for c in context:
        cs = [s["context"][c] for s in stats if c in s["context"]]
        rows = sum(x[0] for x in cs)
        present = sum(x[1] for x in cs)
        if kind == "csv":
            if present == 0:
                plan[c] = "keep"
            elif all(x[2] or x[1] == 0 for x in cs):
                plan[c] = "int64" if present == rows else "float64"
            elif all(x[3] or x[1] == 0 for x in cs):
                plan[c] = "float64"
            else:
                plan[c] = "keep"
        else:  # Parquet keeps its types; int64 in some files and float64 in others -> float64
            kinds = {s["dtypes"][c] for s in stats if "dtypes" in s}
            plan[c] = "float64" if kinds == {"int64", "float64"} else "keep"
    return plan


def _apply_plan(frame: pd.DataFrame, plan: Mapping[str, str]) -> pd.DataFrame:
    """Cast context columns to their whole-log dtype (the casts ``_infer_context`` makes)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out = {}
    for c, target in plan.items():
        if target == "keep" or c not in frame.columns or str(frame[c].dtype) == target:
            continue
        s = frame[c]
        if s.dtype == object:
            arr = pa.array(s.to_numpy(), type=pa.string(), from_pandas=True)
            typ = pa.int64() if target == "int64" else pa.float64()
            values = pc.cast(arr, typ).to_pandas()
        else:
            values = s
        out[c] = pd.Series(np.asarray(values, dtype=target), index=frame.index)
    return frame.assign(**out) if out else frame


# -- the distributed log -------------------------------------------------------------------------
@dataclass
class DaskLog:
    """A validated, user-partitioned event log living on the cluster."""

    client: Any
    frames: Any  # dask DataFrame: validated rows, one user per partition, row = global key
    source: str
    files: list[str]
    context_columns: list[str]
    plan: dict[str, str]
    stats: list[dict[str, Any]]
    n_rows: int
    skipped: dict[str, int]
    first_ts: np.ndarray  # per user
    first_key: np.ndarray
    user_rows: np.ndarray
    ts_min: float
    ts_max: float

    @property
    def n_users(self) -> int:
        return len(self.first_ts)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())


@on_cluster
def load_events_dask(
    client: Any,
    events: str | Path,
    catalog: Catalog,
    *,
    skip_invalid: bool = False,
    npartitions: int | None = None,
) -> DaskLog:
    """Read, shuffle by user and validate a log on the cluster (see the module docstring)."""
    import dask
    import dask.dataframe as dd
    from distributed import wait

    source = str(events)
    files, kind = event_files(events)
    columns = _file_columns(files[0], kind)
    meta = _raw_meta(files, kind, columns)
    context = context_columns(columns)
    raw = dd.from_map(
        _read_file,
        list(enumerate(files)),
        kind=kind,
        names=columns,
        skip_invalid=skip_invalid,
        meta=meta,
        enforce_metadata=False,
        label="read-events",
    )
    n_workers = max(1, len(client.nthreads()))
    n_out = npartitions or max(len(files), 2 * n_workers)
    if "user_id" not in columns:  # the validator's message, before any shuffling
        found = ", ".join(repr(n) for n in columns[:12]) or "none"
        raise EventLogError(
            f"missing required column 'user_id' (columns found: {found})",
            source=files[0],
            column="user_id",
        )
    # "tasks" shuffle: pandas concat keeps every dtype exactly (p2p goes through Arrow)
    shuffled = raw.shuffle(on="user_id", npartitions=n_out, shuffle_method="tasks")
    parts = shuffled.to_delayed()
    validate = dask.delayed(_validate_part)
    results = client.persist(
        [validate(p, catalog, files, source, kind, context, skip_invalid) for p in parts]
    )
    stats = list(dask.compute(*[r[1] for r in results]))
    skipped: dict[str, int] = {}
    for s in stats:
        for k, v in s["skipped"].items():
            skipped[k] = skipped.get(k, 0) + int(v)
    skipped = {r: skipped[r] for r in REASONS if skipped.get(r)}
    n_rows = sum(s["rows"] for s in stats)
    if n_rows == 0:
        if not skipped:
            raise EventLogError("the event log has no data rows", source=source)
        detail = ", ".join(f"{k} {v}" for k, v in skipped.items())
        raise EventLogError(
            f"no valid rows left after skipping {sum(skipped.values())} ({detail})", source=source
        )
    plan = _context_plan(stats, context, kind)
    keep = [i for i, s in enumerate(stats) if s["rows"]]
    frames = [results[i][0] for i in keep]
    vmeta = dask.compute(frames[0].iloc[:0])[0]
    vmeta = _apply_plan(vmeta, plan)
    ddf = dd.from_delayed(
        [dask.delayed(_apply_plan)(f, plan) for f in frames],
        meta=vmeta,
        verify_meta=False,
    )
    ddf = client.persist(ddf)
    wait(ddf)  # before the validation results it is made from are released
    del results, frames
    users = [s.pop("users") for s in stats if s["rows"]]
    return DaskLog(
        client=client,
        frames=ddf,
        source=source,
        files=files,
        context_columns=context,
        plan=plan,
        stats=stats,
        n_rows=n_rows,
        skipped=skipped,
        first_ts=np.concatenate([u[0] for u in users]),
        first_key=np.concatenate([u[1] for u in users]),
        user_rows=np.concatenate([u[2] for u in users]),
        ts_min=min(s["ts_min"] for s in stats if s["rows"]),
        ts_max=max(s["ts_max"] for s in stats if s["rows"]),
    )


# -- holdout -----------------------------------------------------------------------------------
def holdout_threshold(
    first_ts: np.ndarray, first_key: np.ndarray, user_rows: np.ndarray, fraction: float
) -> tuple[float, int]:
    """``(ts, key)``: a user is in the holdout when ``(first ts, first key) >= (ts, key)``.

    The same users as ``training.pipeline.holdout_mask``: arrival order is (first event time,
    first appearance in the log), and the latest arrivals that make up at least ``fraction`` of
    the rows form the holdout, with at least one user on each side."""
    if not 0 < fraction < 1:
        raise ValueError("holdout fraction must be in (0, 1)")
    n_users = len(first_ts)
    if n_users < 2:
        raise NextstepError("training needs at least two users (one for the holdout)")
    order = np.lexsort((first_key, first_ts))
    from_end = np.cumsum(user_rows[order][::-1])
    k = int(np.searchsorted(from_end, fraction * user_rows.sum()) + 1)
    k = min(max(k, 1), n_users - 1)
    last = order[::-1][k - 1]
    return float(first_ts[last]), int(first_key[last])


@dataclass(frozen=True)
class Split:
    """The holdout as the workers apply it: a calendar ``cut`` (offers at or after it) or an
    ``arrival`` threshold (users whose ``(first ts, first key) >= (ts, key)``)."""

    cut: float | None = None
    arrival: tuple[float, int] | None = None


def split_for(dlog: DaskLog, holdout: Any) -> Split:
    """Resolve a ``training.holdout.Holdout`` against the distributed log."""
    if holdout.strategy == "arrival":
        return Split(
            arrival=holdout_threshold(
                dlog.first_ts, dlog.first_key, dlog.user_rows, holdout.fraction
            )
        )
    if holdout.start is not None:
        return Split(cut=holdout.start)
    return Split(cut=_time_cut(dlog, holdout.rows_held_out(dlog.n_rows)))


def _time_cut(dlog: DaskLog, k: int, bins: int = 4096) -> float:
    """The ``k``-th latest offer time of the whole log, exactly (``Holdout.cut`` on one
    machine), without shipping every time to the client: a histogram finds the bin that holds
    it, then only that bin's times travel."""
    import dask

    edges = np.linspace(dlog.ts_min, dlog.ts_max, bins + 1)
    parts = dlog.frames.to_delayed()

    def hist(frame: pd.DataFrame) -> np.ndarray:
        return np.histogram(frame["ts"].to_numpy(dtype=np.float64), edges)[0]

    counts = np.sum(dask.compute(*[dask.delayed(hist)(p) for p in parts]), axis=0)
    from_end = np.cumsum(counts[::-1])
    b = int(np.searchsorted(from_end, k))  # bins from the end, the k-th latest is in bin -1-b
    lo, hi = edges[bins - 1 - b], edges[bins - b]
    need = k - (int(from_end[b - 1]) if b > 0 else 0)

    def inside(frame: pd.DataFrame) -> np.ndarray:
        ts = frame["ts"].to_numpy(dtype=np.float64)
        return ts[(ts >= lo) & ((ts < hi) | (b == 0))]

    values = np.concatenate(dask.compute(*[dask.delayed(inside)(p) for p in parts]))
    return float(np.sort(values)[::-1][need - 1])


def _holdout_rows(frame: pd.DataFrame, split: Split) -> np.ndarray:
    """Per row of a partition: is the offer held out?"""
    if split.cut is not None:
        return frame["ts"].to_numpy(dtype=np.float64) >= split.cut
    assert split.arrival is not None
    return _arrival_rows(frame, split.arrival)


def _held_users_rows(frame: pd.DataFrame, split: Split) -> np.ndarray:
    """Per row of a partition: does its user have a held-out offer (its history included)?"""
    ho = pd.Series(_holdout_rows(frame, split), index=frame.index)
    return ho.groupby(frame["user_id"], sort=False).transform("any").to_numpy(dtype=bool)


def _arrival_rows(frame: pd.DataFrame, threshold: tuple[float, int]) -> np.ndarray:
    """Per row of a partition: does its user belong to the arrival holdout?"""
    g = frame.groupby("user_id", sort=False)
    fts = g["ts"].transform("min").to_numpy(dtype=np.float64)
    fkey = g["row"].transform("min").to_numpy(dtype=np.int64)
    t, k = threshold
    return (fts > t) | ((fts == t) & (fkey >= k))


# -- features ----------------------------------------------------------------------------------
def _uniform(keys: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """A uniform [0, 1) number per row key (splitmix64): splits that do not depend on the
    partitioning."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15 + salt) % (1 << 64))
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _feature_columns(spec: FeatureSpec) -> list[str]:
    return [f"f{i}" for i in range(len(spec.names))]


def _features_meta(spec: FeatureSpec) -> pd.DataFrame:
    cols: dict[str, Any] = {c: pd.Series([], dtype=np.float64) for c in _feature_columns(spec)}
    cols.update(
        key=pd.Series([], dtype=np.int64),
        accepted=pd.Series([], dtype=np.int8),
        dropped=pd.Series([], dtype=np.int8),
        gone=pd.Series([], dtype=np.int8),
        came_back=pd.Series([], dtype=np.int8),
        goal=pd.Series([], dtype=bool),
        stage=pd.Series([], dtype=np.int16),
        holdout=pd.Series([], dtype=bool),
        u=pd.Series([], dtype=np.float64),
        u_sample=pd.Series([], dtype=np.float64),
        gap_s=pd.Series([], dtype=np.float64),
        truth=pd.Series([], dtype=np.float64),
    )
    return pd.DataFrame(cols)


def _features_part(
    frame: pd.DataFrame,
    catalog: Catalog,
    spec: FeatureSpec,
    split: Split,
    seed: int,
) -> pd.DataFrame:
    """Point-in-time features of one partition (whole users) with the offline builder, plus
    labels, holdout flag, split numbers and the gap to the user's previous event."""
    if frame.empty:
        return _features_meta(spec)
    F = features_for(frame, catalog, spec)
    keys = frame["row"].to_numpy(dtype=np.int64)
    out = pd.DataFrame(F.X, columns=_feature_columns(spec))
    codes, _ = pd.factorize(frame["user_id"], sort=False)
    order = np.lexsort((keys, F.ts, codes))
    gap = np.full(len(frame), np.nan)
    same = codes[order][1:] == codes[order][:-1]
    gap[order[1:][same]] = (F.ts[order][1:] - F.ts[order][:-1])[same]
    truth = (
        pd.to_numeric(frame[TRUTH_COLUMN], errors="coerce").to_numpy(dtype=np.float64)
        if TRUTH_COLUMN in frame.columns
        else np.full(len(frame), np.nan)
    )
    return out.assign(
        key=keys,
        accepted=F.accepted.astype(np.int8),
        dropped=F.dropped.astype(np.int8),
        gone=(F.dropped | ~F.came_back).astype(np.int8),  # fit_bundle's drop-model label
        came_back=F.came_back.astype(np.int8),
        goal=catalog.arrays["is_goal"][F.step_index] > 0,
        stage=np.asarray(catalog.stage_indices, dtype=np.int16)[F.step_index],
        holdout=_holdout_rows(frame, split),
        u=_uniform(keys, seed, 1),
        u_sample=_uniform(keys, seed, 2),
        gap_s=gap,
        truth=truth,
    )


@on_cluster
def spec_for(dlog: DaskLog, split: Split | None = None) -> FeatureSpec:
    """``FeatureSpec.from_frame`` over the distributed log's training rows (all rows without
    ``split``): categories from every partition, numeric columns as they are."""
    import dask

    cols = feature_context_columns(dlog.context_columns)

    def facts(frame: pd.DataFrame) -> tuple[set[str], dict[str, dict[str, int]]]:
        if split is not None and not frame.empty:
            frame = frame.loc[~_holdout_rows(frame, split)]
        return context_facts(frame, cols)

    parts = dask.compute(*[dask.delayed(facts)(p) for p in dlog.frames.to_delayed()])
    return FeatureSpec.from_counts(cols, *merge_facts(parts))


# -- fitting -----------------------------------------------------------------------------------
def _arrays(client: Any, sel: Any, cols: list[str], label: str) -> tuple[Any, Any, int]:
    """``(X, y, rows)`` dask arrays of a (filtered) feature frame for LightGBM: one block per
    worker, made of the non-empty partitions assigned round-robin in partition order.

    Distributed LightGBM's bins and sums depend on which rows each worker holds and in what
    order, so a fixed placement keeps the model stable from run to run (and a worker without
    rows, which cannot build its dataset, never takes part)."""
    import dask
    import dask.array as da

    lengths = sel.map_partitions(len).compute().tolist()
    keep = [i for i, n in enumerate(lengths) if n]
    if not keep:
        return None, None, 0
    xs = sel[cols].to_dask_array(lengths=lengths).to_delayed().ravel()
    ys = sel[label].to_dask_array(lengths=lengths).to_delayed().ravel()
    workers = sorted(client.nthreads())
    xb, yb = [], []
    for w, worker in enumerate(workers):
        mine = keep[w :: len(workers)]
        if not mine:
            continue
        n = sum(lengths[i] for i in mine)
        x = dask.delayed(np.concatenate)([xs[i] for i in mine])
        y = dask.delayed(np.concatenate)([ys[i] for i in mine])
        fx, fy = client.compute([x, y], workers=[worker], allow_other_workers=False)
        xb.append(da.from_delayed(dask.delayed(fx), (n, len(cols)), np.float64))
        yb.append(da.from_delayed(dask.delayed(fy), (n,), np.int8))
    return da.concatenate(xb), da.concatenate(yb), int(sum(lengths))


@on_cluster
def fit_readiness_dask(
    client: Any,
    feats: Any,
    mask: Any,
    label: str,
    spec: FeatureSpec,
    kw: Mapping[str, Any],
    *,
    min_rows: int = 0,
) -> ReadinessModel | None:
    """A calibrated ``ReadinessModel`` fitted with ``lightgbm.dask.DaskLGBMClassifier`` on the
    rows of ``feats`` where ``mask`` holds: the model's own LightGBM parameters
    (``ReadinessModel.lightgbm_params``) and isotonic calibration (``fit_calibration``) on a
    held-out ``calibration_fraction`` of the rows (chosen by a hash of the row key instead of a
    permutation). None when there are fewer than ``min_rows`` rows or one class.
    """
    import lightgbm as lgb
    from lightgbm.dask import DaskLGBMClassifier

    model = ReadinessModel(**kw)
    cols = _feature_columns(spec)
    sel = feats[mask]
    n, pos = (int(v) for v in _compute(sel[label].count(), sel[label].sum()))
    if n < max(min_rows, 1) or pos in (0, n):
        return None
    use_cal = model.calibrates(n)
    fit_sel = sel[sel["u"] >= model.calibration_fraction] if use_cal else sel
    X, y, n_fit = _arrays(client, fit_sel, cols, label)
    if X is None:
        return None
    cats = [c for c in (model.categorical_features or ()) if c < len(cols)]
    # the threads are each worker's own (lightgbm.dask gives every worker its thread count)
    clf = DaskLGBMClassifier(
        client=client, n_estimators=model.n_estimators, **model.lightgbm_params(n_fit)
    )
    # lightgbm.dask prints "Finding random open ports for workers" (its default logger)
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        _workers_in_rank_order(),
    ):
        warnings.simplefilter("ignore")
        _fit_watching_workers(client, lambda: clf.fit(X, y, categorical_feature=cats or "auto"))
    booster: lgb.Booster = clf.to_local().booster_
    model.booster_ = booster
    model.classes_ = np.array([0, 1])
    model.n_features_in_ = len(cols)
    raw, y_cal = None, None
    if use_cal:
        cal = sel[sel["u"] < model.calibration_fraction]
        scored = cal.map_partitions(
            _raw_scores, booster, cols, label, meta={"raw": np.float64, "y": np.int8}
        ).compute()
        raw, y_cal = scored["raw"].to_numpy(), scored["y"].to_numpy()
    model.fit_calibration(raw, y_cal)
    return model


def _fit_watching_workers(client: Any, fit: Callable[[], Any], poll: float = 0.2) -> None:
    """Run ``fit`` (a ``lightgbm.dask`` fit) and fail clearly if a worker leaves meanwhile.

    ``lightgbm.dask`` pins one training task to each worker and the workers then talk over
    LightGBM's own sockets: when one dies, Dask cannot move its task (it waits for a worker
    that will not come back, a restarted one has a new address) and the others block in
    LightGBM's network layer, so the fit would hang. The fit runs in a daemon thread while
    this one watches the scheduler's worker list; a worker gone is a ``NextstepError``."""
    before = set(client.nthreads())
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fit()
        except BaseException as exc:  # re-raised below, in the caller's thread
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="nextstep-lightgbm-fit", daemon=True).start()
    while not done.wait(poll):
        _raise_if_lost(before, client)
    if failure:
        _raise_if_lost(before, client)  # a worker's death can also surface as a fit error
        raise failure[0]


def _raise_if_lost(before: set[str], client: Any) -> None:
    lost = sorted(before - set(client.nthreads()))
    if lost:
        raise NextstepError(
            f"the Dask cluster lost worker {', '.join(lost)} while LightGBM was training; "
            "distributed LightGBM cannot go on without it: run the command again (restart "
            "the cluster's workers if they stay busy)"
        )


@contextlib.contextmanager
def _workers_in_rank_order() -> Iterator[None]:
    """Give LightGBM's machines their ranks in sorted worker-address order.

    ``lightgbm.dask`` ranks the machines in the order the scheduler happens to report where the
    data is, and the rank decides which machine computes the histogram bins of which features
    (from its own rows): the same data then gives one of several models at random. Sorting the
    worker list it assigns ports to fixes the ranks. This wraps a private helper of
    ``lightgbm.dask`` (4.x); when it is missing, training works as before, just without this
    guarantee."""
    import lightgbm.dask as lgb_dask

    original = getattr(lgb_dask, "_assign_open_ports_to_workers", None)
    if original is None:
        yield
        return

    def assign(*, client: Any, workers: list[str]) -> Any:
        return original(client=client, workers=sorted(workers))

    lgb_dask._assign_open_ports_to_workers = assign
    try:
        yield
    finally:
        lgb_dask._assign_open_ports_to_workers = original


def _raw_scores(df: pd.DataFrame, booster: Any, cols: list[str], label: str) -> pd.DataFrame:
    X = np.ascontiguousarray(df[cols].to_numpy(dtype=np.float64))
    raw = booster.predict(X, num_threads=1) if len(df) else np.empty(0)
    return pd.DataFrame({"raw": raw, "y": df[label].to_numpy(dtype=np.int8)})


def _compute(*things: Any) -> tuple[Any, ...]:
    import dask

    return dask.compute(*things)


def _score_part(
    df: pd.DataFrame, bundle: ModelBundle, baseline: Any, cols: list[str]
) -> pd.DataFrame:
    """Holdout predictions of one partition with the final (local) models."""
    X = np.ascontiguousarray(df[cols].to_numpy(dtype=np.float64))
    empty = np.empty(0)
    return pd.DataFrame(
        {
            "key": df["key"].to_numpy(dtype=np.int64),
            "y": df["accepted"].to_numpy(dtype=np.int64),
            "stage": df["stage"].to_numpy(dtype=np.int64),
            "lgbm": bundle.readiness.positive_proba(X) if len(df) else empty,
            "logreg": baseline.predict_proba(X)[:, 1] if len(df) else empty,
            "truth": df["truth"].to_numpy(dtype=np.float64),
        }
    )


# -- the outcome and the run ---------------------------------------------------------------------
@dataclass
class DaskTrainingOutcome(TrainingOutcome):
    """``TrainingOutcome`` whose holdout lives on the cluster: counts instead of a mask."""

    n_train: int = 0
    n_holdout: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def train_rows(self) -> int:
        return self.n_train

    @property
    def holdout_rows(self) -> int:
        return self.n_holdout


@on_cluster
def fit_and_evaluate_dask(
    client: Any,
    dlog: DaskLog,
    catalog: Catalog,
    *,
    seed: int = 0,
    holdout: Any = None,
    params: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    step_feature: bool = True,
) -> Any:
    """The Dask twin of ``training.pipeline.fit_and_evaluate`` (returns a ``TrainingOutcome``
    with ``n_train``/``n_holdout`` and ``extra["split"]``, the holdout boundary); ``holdout``
    is a ``training.holdout.Holdout`` (default: the calendar cut)."""
    say = progress or (lambda _msg: None)
    plan = holdout or Holdout()
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    say("dask: building point-in-time features")
    split = split_for(dlog, plan)
    spec = spec_for(dlog, split)  # learned from the training rows, as on one machine
    if step_feature:
        steps = dlog.frames.map_partitions(
            lambda f: f.loc[~_holdout_rows(f, split), "step"] if len(f) else f["step"],
            meta=("step", dlog.frames._meta["step"].dtype),
        )
        seen = set(steps.unique().compute().tolist())
        spec = dataclasses.replace(spec, step_ids=tuple(s for s in catalog.ids if s in seen))
    feats = dlog.frames.map_partitions(
        _features_part, catalog, spec, split, seed, meta=_features_meta(spec)
    )
    feats = client.persist(feats)
    train = ~feats["holdout"]
    n_train, n_pos, n_ho = (
        int(v)
        for v in _compute(train.sum(), feats["accepted"][train].sum(), feats["holdout"].sum())
    )
    if split.cut is not None:
        check_sides(n_train, n_ho, split.cut)
    if n_pos in (0, n_train):
        raise NextstepError("the training rows have only one outcome; readiness needs both")
    gaps = feats["gap_s"][train & feats["gap_s"].notnull()]
    if n_train <= GAP_EXACT_ROWS:
        g = gaps.compute().to_numpy(dtype=np.float64)
        gap_hours = float(np.median(g) / 3600.0) if len(g) else 24.0
    else:
        q = gaps.quantile(0.5).compute()
        gap_hours = float(q / 3600.0) if np.isfinite(q) else 24.0
    seconds["features"] = time.perf_counter() - t

    t = time.perf_counter()
    say("dask: fitting LightGBM readiness, drop and come-back models (lightgbm.dask)")
    cats = tuple(spec.categorical_indices)
    kw = {"categorical_features": cats, "random_state": seed, "n_jobs": 1, **(params or {})}
    mono = kw.pop("monotone_constraints", readiness_monotone(spec.names))
    readiness = fit_readiness_dask(
        client, feats, train, "accepted", spec, {**kw, "monotone_constraints": mono}
    )
    if readiness is None:  # not reached: both outcomes were checked above
        raise NextstepError("the readiness model could not be fitted on the training rows")
    opt = {**kw}
    opt.setdefault("n_estimators", 80)
    no = train & (feats["accepted"] == 0)
    acc_ng = train & (feats["accepted"] == 1) & ~feats["goal"]
    drop = fit_readiness_dask(client, feats, no, "gone", spec, opt, min_rows=50)
    back = fit_readiness_dask(client, feats, acc_ng, "came_back", spec, opt, min_rows=50)
    n_no, n_drop, n_ang, n_back = (
        int(v)
        for v in _compute(
            no.sum(), feats["gone"][no].sum(), acc_ng.sum(), feats["came_back"][acc_ng].sum()
        )
    )
    bundle = ModelBundle(
        readiness=readiness,
        spec=spec,
        drop=drop,
        back=back,
        typical_gap_hours=gap_hours,
        base_rates={
            "accept": n_pos / n_train,
            "drop": n_drop / n_no if n_no else 0.3,
            "back": n_back / n_ang if n_ang else 0.8,
        },
    )
    seconds["fit_lgbm"] = time.perf_counter() - t

    t = time.perf_counter()
    say("dask: fitting the logistic-regression baseline on a sample")
    cols = _feature_columns(spec)
    rate = min(1.0, LOGREG_MAX_ROWS / max(n_train, 1))
    sample = feats[train & (feats["u_sample"] < rate)] if rate < 1 else feats[train]
    sample = sample[[*cols, "key", "accepted"]].compute().sort_values("key", kind="stable")
    baseline = LogisticBaseline(categorical_features=cats, random_state=seed).fit(
        sample[cols].to_numpy(dtype=np.float64), sample["accepted"].to_numpy(dtype=int)
    )
    seconds["fit_logreg"] = time.perf_counter() - t
    reference = context_reference(sample[cols].to_numpy(dtype=np.float64), spec)  # drift watch
    if reference:
        bundle.meta[DRIFT_META_KEY] = reference

    say("dask: evaluating on the holdout")
    hold = feats[feats["holdout"]]
    meta = {"key": np.int64, "y": np.int64, "stage": np.int64}
    meta.update(lgbm=np.float64, logreg=np.float64, truth=np.float64)
    scored = hold.map_partitions(_score_part, bundle, baseline, cols, meta=meta).compute()
    scored = scored.sort_values("key", kind="stable")
    y = scored["y"].to_numpy(dtype=np.int64)
    stage = scored["stage"].to_numpy(dtype=np.int64)
    preds = {"lgbm": scored["lgbm"].to_numpy(), "logreg": scored["logreg"].to_numpy()}
    truth = scored["truth"].to_numpy(dtype=np.float64)
    if TRUTH_COLUMN in dlog.context_columns and len(truth) and np.isfinite(truth).all():
        preds["truth"] = truth
    metrics = {name: ev.evaluate(y, p, stage) for name, p in preds.items()}
    model_params = {
        k: v for k, v in bundle.readiness.get_params().items() if k != "categorical_features"
    }
    example = _example(hold, cols, spec)
    return DaskTrainingOutcome(
        bundle=bundle,
        baseline=baseline,
        spec=spec,
        holdout=np.zeros(0, dtype=bool),
        metrics=metrics,
        y=y,
        predictions=preds,
        stage=stage,
        params=model_params,
        typical_gap_hours=gap_hours,
        example=example,
        seconds=seconds,
        n_train=n_train,
        n_holdout=n_ho,
        extra={"split": split, "features": feats},
        holdout_info=plan.describe(split.cut),
    )


def _example(hold: Any, cols: list[str], spec: FeatureSpec, n: int = 5) -> pd.DataFrame:
    """A few holdout feature rows (finite ones first): the pyfunc's input example."""
    rows: list[pd.DataFrame] = []
    got = 0
    for i in range(hold.npartitions):
        part = hold.get_partition(i)[cols].compute()
        if len(part):
            finite = part[np.isfinite(part.to_numpy()).all(axis=1)]
            rows.append(finite if len(finite) else part)
            got += len(rows[-1])
        if got >= n:
            break
    X = pd.concat(rows).head(n) if rows else pd.DataFrame(columns=cols)
    return pd.DataFrame(X.to_numpy(dtype=np.float64), columns=spec.names)


@on_cluster
def fingerprint_dask(dlog: DaskLog, catalog: Catalog) -> dict[str, Any]:
    """``training.pipeline.fingerprint`` of the distributed log: the row hashes are computed on
    the workers and fed to SHA-256 in global row order, so the same rows in the same order give
    the same hash as a single-machine run on one file holding them."""
    import dask

    body_meta = dlog.frames._meta.drop(columns=["row"], errors="ignore")

    def hashes(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        body = frame.drop(columns=["row"], errors="ignore")
        h = pd.util.hash_pandas_object(body, index=False).to_numpy(dtype=np.uint64)
        return frame["row"].to_numpy(dtype=np.int64), h

    parts = dask.compute(*[dask.delayed(hashes)(p) for p in dlog.frames.to_delayed()])
    keys = np.concatenate([p[0] for p in parts])
    hs = np.concatenate([p[1] for p in parts])
    h = hashlib.sha256()
    h.update(json.dumps([[c, str(body_meta[c].dtype)] for c in body_meta.columns]).encode())
    h.update(hs[np.argsort(keys, kind="stable")].tobytes())
    return {
        "rows": dlog.n_rows,
        "users": dlog.n_users,
        "ts_min": iso_seconds(dlog.ts_min),
        "ts_max": iso_seconds(dlog.ts_max),
        "sha256": h.hexdigest(),
        "catalog_sha256": catalog_hash(catalog),
        "skipped": int(dlog.n_skipped),
        "source": dlog.source,
    }


@on_cluster
def holdout_events_dask(dlog: DaskLog, split: Split, cap: int) -> pd.DataFrame:
    """The validated events of the users with held-out offers (their whole history) in log
    order, whole users, at most ``cap`` rows (users in order of first appearance, as
    ``training.pipeline._holdout_artifacts`` keeps)."""

    def users(frame: pd.DataFrame) -> pd.DataFrame:
        if frame.empty:
            return pd.DataFrame({"first": np.empty(0, np.int64), "rows": np.empty(0, np.int64)})
        held = frame.loc[_held_users_rows(frame, split)]
        g = held.groupby("user_id", sort=False)["row"]
        return pd.DataFrame({"first": g.min().to_numpy(), "rows": g.size().to_numpy()})

    stats = dlog.frames.map_partitions(users, meta={"first": np.int64, "rows": np.int64}).compute()
    fk, rows = stats["first"].to_numpy(), stats["rows"].to_numpy()
    order = np.argsort(fk, kind="stable")
    fits = np.cumsum(rows[order]) <= cap
    max_key = int(fk[order][fits].max()) if fits.any() else -1

    def pick(frame: pd.DataFrame) -> pd.DataFrame:
        if frame.empty:
            return frame
        first = frame.groupby("user_id", sort=False)["row"].transform("min").to_numpy()
        return frame.loc[_held_users_rows(frame, split) & (first <= max_key)]

    out = dlog.frames.map_partitions(pick, meta=dlog.frames._meta).compute()
    return out.sort_values("row", kind="stable").reset_index(drop=True)


@on_cluster
def champion_on_holdout_dask(
    dlog: DaskLog, catalog: Catalog, split: Split, candidate: ModelBundle
) -> ChampionScore:
    """``training.pipeline.champion_on_holdout`` with the holdout scored on the workers."""

    def score(bundle: ModelBundle) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scored = dlog.frames.map_partitions(
            _score_holdout_with, bundle, catalog, split, meta=_SCORED_META
        ).compute()
        return scored["y"].to_numpy(), scored["p"].to_numpy(), scored["ts"].to_numpy()

    return score_champion(score, candidate)


_SCORED_META = {"y": np.int64, "p": np.float64, "ts": np.float64}


def _score_holdout_with(
    frame: pd.DataFrame, bundle: ModelBundle, catalog: Catalog, split: Split
) -> pd.DataFrame:
    """The held-out offers of one partition scored with their users' whole history."""
    ho = _holdout_rows(frame, split) if not frame.empty else np.zeros(0, dtype=bool)
    if not ho.any():
        return pd.DataFrame({k: np.empty(0, t) for k, t in _SCORED_META.items()})
    F = features_for(frame, catalog, bundle.spec)
    p = bundle.readiness.positive_proba(np.ascontiguousarray(F.X[ho]))
    ts = frame["ts"].to_numpy(dtype=np.float64)[ho]
    return pd.DataFrame({"y": F.accepted[ho].astype(np.int64), "p": p, "ts": ts})


def train_on_dask(
    events: str | Path,
    catalog: Catalog,
    address: str,
    *,
    experiment: str = "nextstep-train",
    promote: bool = False,
    tolerance: float = 0.0,
    seed: int = 0,
    skip_invalid: bool = False,
    params: Mapping[str, Any] | None = None,
    npartitions: int | None = None,
    holdout: Any = None,
    step_feature: bool = True,
    progress: Progress | None = None,
    readiness_model: str = DEFAULT_READINESS,
) -> tuple[Any, dict[str, int]]:
    """``nextstep train --dask``: ``(TrainResult, skipped rows per reason)``."""
    say = progress or (lambda _msg: None)
    event_files(events)  # a missing or empty input fails before a cluster starts
    say(f"dask: connecting ({address})")
    with dask_client(address) as client:
        say("dask: reading, shuffling by user and validating the event log")
        dlog = load_events_dask(
            client, events, catalog, skip_invalid=skip_invalid, npartitions=npartitions
        )
        fp = fingerprint_dask(dlog, catalog)
        out = fit_and_evaluate_dask(
            client,
            dlog,
            catalog,
            seed=seed,
            holdout=holdout,
            params=params,
            progress=say,
            step_feature=step_feature,
        )
        split = out.extra["split"]
        out.extra.pop("features", None)  # release the feature partitions before logging
        result = log_training(
            out,
            fp,
            catalog,
            holdout_events=lambda: holdout_events_dask(dlog, split, HOLDOUT_ARTIFACT_ROWS),
            score_champion=lambda candidate: champion_on_holdout_dask(
                dlog, catalog, split, candidate
            ),
            experiment=experiment,
            promote=promote,
            tolerance=tolerance,
            seed=seed,
            engine="dask",
            progress=say,
            readiness_model=readiness_model,
        )
    return result, dlog.skipped


# -- batch scoring: predict and recommend --------------------------------------------------------
def _predict_part(frame: pd.DataFrame, bundle: ModelBundle, catalog: Catalog) -> pd.DataFrame:
    if frame.empty:
        return _predict_meta()
    F = features_for(frame, catalog, bundle.spec)
    return pd.DataFrame(
        {
            "key": frame["row"].to_numpy(dtype=np.int64),
            "user_id": frame["user_id"].to_numpy(dtype=object),
            "ts": frame["ts"].to_numpy(dtype=np.float64),
            "step": frame["step"].to_numpy(dtype=object),
            "p_accept": bundle.readiness.positive_proba(np.ascontiguousarray(F.X)),
        }
    )


def _predict_meta() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "key": pd.Series([], dtype=np.int64),
            "user_id": pd.Series([], dtype=object),
            "ts": pd.Series([], dtype=np.float64),
            "step": pd.Series([], dtype=object),
            "p_accept": pd.Series([], dtype=np.float64),
        }
    )


def predict_on_dask(
    events: str | Path,
    catalog: Catalog,
    bundle: ModelBundle,
    address: str,
    *,
    skip_invalid: bool = False,
) -> tuple[pd.DataFrame, int]:
    """``nextstep predict --dask``: ``(user_id, ts, step, p_accept`` in log order, skipped)``.
    Features and scores are computed on the workers; the four columns come back."""
    event_files(events)  # fail before starting a cluster
    with dask_client(address) as client:
        dlog = load_events_dask(client, events, catalog, skip_invalid=skip_invalid)
        out = dlog.frames.map_partitions(
            _predict_part, bundle, catalog, meta=_predict_meta()
        ).compute()
    out = out.sort_values("key", kind="stable").drop(columns=["key"]).reset_index(drop=True)
    return out, dlog.n_skipped


def _recommend_part(
    frame: pd.DataFrame,
    catalog: Catalog,
    policy: str,
    bundle: ModelBundle | None,
    version: str | None,
    seed: int,
) -> pd.DataFrame:
    if frame.empty:
        return _recommend_meta()
    scorer = None if bundle is None else ModelScorer(bundle, catalog)
    decider = Decider(
        catalog, PolicyConfig.parse(policy), scorer=scorer, model_version=version, seed=seed
    )
    ctx = feature_context_columns(context_columns(frame.columns))
    out = recommend_frame(frame, catalog, decider, ctx)
    first = frame.groupby("user_id", sort=False)["row"].min()
    out.insert(0, "first_key", first.loc[out["user_id"]].to_numpy(dtype=np.int64))
    return out[["first_key", *OUTPUT_COLUMNS]]


def _recommend_meta() -> pd.DataFrame:
    text = ("user_id", "step", "stage", "policy", "reason")
    cols: dict[str, Any] = {"first_key": pd.Series([], dtype=np.int64)}
    for c in OUTPUT_COLUMNS:
        cols[c] = pd.Series([], dtype=object if c in text else np.float64)
    return pd.DataFrame(cols)


def recommend_on_dask(
    events: str | Path,
    catalog: Catalog,
    policy: str,
    bundle: ModelBundle | None,
    version: str | None,
    address: str,
    *,
    seed: int = 0,
    skip_invalid: bool = False,
) -> pd.DataFrame:
    """``nextstep recommend --dask``: one decision per user, decided on the workers with the
    same ``Decider`` (its randomness depends only on seed, user and history), users in order of
    first appearance."""
    event_files(events)  # fail before starting a cluster
    with dask_client(address) as client:
        dlog = load_events_dask(client, events, catalog, skip_invalid=skip_invalid)
        out = dlog.frames.map_partitions(
            _recommend_part, catalog, policy, bundle, version, seed, meta=_recommend_meta()
        ).compute()
    out = out.sort_values("first_key", kind="stable").drop(columns=["first_key"])
    return out.reset_index(drop=True)
