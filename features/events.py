"""The event log (docs/design.md section 4, a contract): loading, validation and writing.

Logs can hold tens of millions of rows, so everything here works on whole columns (pyarrow and
numpy); no Python code runs per row (only the one bad row an error names is looked at on its
own). Validation is one function, ``validate_frame``, shared by
files (``load_events``) and by frames built in memory (the simulator, the service export), so
every producer of events obeys the same rules and reports problems the same way: an
``EventLogError`` naming the file, the 1-based data row and the column.
"""

from __future__ import annotations

import contextlib
import difflib
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.availability import missing_value
from features.catalog import Catalog
from features.errors import EventLogError
from features.timeutil import TS_MAX, TS_MIN, TS_RANGE_TEXT

OUTCOMES: tuple[str, ...] = ("accepted", "declined", "dropped")
REQUIRED: tuple[str, ...] = ("user_id", "ts", "step", "outcome")
OPTIONAL: tuple[str, ...] = ("propensity", "policy", "decision_id")
ID_COLUMNS: tuple[str, ...] = ("user_id", "step", "outcome", "policy", "decision_id")
#: Skip reasons, in the order the checks run (the first failing check names a row's reason).
REASONS: tuple[str, ...] = (
    "malformed_row",
    "empty_user_id",
    "unknown_step",
    "unknown_outcome",
    "bad_ts",
    "bad_propensity",
    "long_id",
    "after_conversion",
    "unavailable_step",
)
#: The longest user id (characters) the HTTP API accepts; the offline log refuses longer ones
#: too, so a log the CLI reads can be replayed against the service.
MAX_ID_LENGTH = 256
#: The dtype of user_id, step and outcome: pandas' ``str`` (pyarrow-backed, NaN for missing).
STR_DTYPE = pd.StringDtype("pyarrow", na_value=np.nan)

_CSV_SUFFIXES = (".csv", ".csv.gz")
_PARQUET_SUFFIXES = (".parquet", ".pq")
# Epoch seconds must be a date between years 1 and 9999: catches milliseconds passed as seconds.
_TS_MIN = TS_MIN  # features.timeutil: the same range as the API
_TS_MAX = TS_MAX
_NUMBER_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"


@dataclass
class EventLog:
    """A validated event log.

    ``frame`` is in the original file order with columns ``row`` (int64, 1-based data-row
    number: the CSV record number without the header and blank lines, the position for frames
    built in memory; kept through skipping, so it always points back at the source),
    ``user_id``/``step``/``outcome`` (pandas ``str``), ``ts`` (float64 UTC epoch seconds),
    ``propensity`` (float64, NaN when absent), ``policy``/``decision_id`` (object, str or
    None), then the context columns (strings as object with None, numbers numeric).
    """

    frame: pd.DataFrame
    source: str
    context_columns: list[str]
    n_skipped: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return len(self.frame)


# -- loading -----------------------------------------------------------------------------------
def load_events(path: str | Path, catalog: Catalog, *, skip_invalid: bool = False) -> EventLog:
    """Read a CSV (``.csv``, ``.csv.gz``) or Parquet (``.parquet``, ``.pq``) log and validate it."""
    source = str(path)
    p = Path(path)
    kind = file_kind(p, source)
    if not p.exists():
        raise EventLogError("file not found", source=source)
    if not p.is_file():
        raise EventLogError("not a regular file", source=source)
    if kind == "csv":
        df, rows, pre_skipped = read_csv(p, source, skip_invalid)
    else:
        df, rows, pre_skipped = read_parquet(p, source), None, 0
    return _validate(
        df, catalog, source=source, skip_invalid=skip_invalid, rows=rows, pre_skipped=pre_skipped
    )


def context_columns(columns: Iterable[str]) -> list[str]:
    """The context columns among a log's columns: all but the required and optional ones (and
    ``row``, which validation assigns)."""
    return [c for c in columns if c not in REQUIRED and c not in OPTIONAL and c != "row"]


def file_kind(p: Path, source: str) -> str:
    """``csv`` or ``parquet`` by the file name's extension (an ``EventLogError`` otherwise)."""
    name = p.name.lower()
    if name.endswith(_CSV_SUFFIXES):
        return "csv"
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    raise EventLogError(
        "unsupported file type: expected .csv, .csv.gz, .parquet or .pq", source=source
    )


def read_csv_header(p: Path, source: str) -> list[str]:
    """The column names of a CSV event log (only its first block is parsed)."""
    import pyarrow.csv as pacsv

    try:
        skip_all = pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=_skip_row)
        with _quiet_row_decoding(), pacsv.open_csv(p, parse_options=skip_all) as reader:
            return list(reader.schema.names)
    except UnicodeDecodeError:
        raise EventLogError("the header is not valid UTF-8 text", source=source) from None
    except MemoryError:
        raise
    except Exception as exc:
        raise _csv_error(exc, source) from None


def read_csv(
    p: Path, source: str, skip_invalid: bool, *, infer_context: bool = True
) -> tuple[pd.DataFrame, np.ndarray | None, int]:
    """``(raw frame, row numbers or None for 1..n, malformed rows skipped)`` of a CSV log.

    Every column is read as text first, so ids keep leading zeros and nothing is guessed as
    a date; context columns are then made numeric only when every value is a number (unless
    ``infer_context`` is False: the Dask reader decides that over all files at once)."""
    import pyarrow.csv as pacsv

    _refuse_binary(p, source)
    names = read_csv_header(p, source)
    _check_names(names, source)
    convert = pacsv.ConvertOptions(
        column_types={n: pa.string() for n in names},
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    parse = pacsv.ParseOptions(newlines_in_values=True)
    try:
        table = pacsv.read_csv(p, parse_options=parse, convert_options=convert)
        rows, pre_skipped = None, 0
    except MemoryError:
        raise
    except Exception as exc:
        if "CSV parse error" not in str(exc):
            raise _csv_error(exc, source, names) from None
        table, rows, pre_skipped = _read_csv_malformed(p, source, names, convert, skip_invalid)
    columns: dict[str, Any] = {}
    for name, col in zip(names, table.columns, strict=True):
        if name in REQUIRED or name in OPTIONAL or not infer_context:
            columns[name] = col.to_pandas()  # pandas ``str`` (pyarrow-backed), no copy
        else:
            columns[name] = _infer_context(col)
    return pd.DataFrame(columns, columns=names, copy=False), rows, pre_skipped


def _refuse_binary(p: Path, source: str) -> None:
    """A NUL byte in the first 8 KiB means binary content (an image, a spreadsheet, a Parquet
    file named .csv): say so, instead of a parse error quoting garbage or "empty file"."""
    if p.name.lower().endswith(".gz"):
        return  # compressed: pyarrow decompresses, and its errors say so
    try:
        with p.open("rb") as f:
            head = f.read(8192)
    except OSError as exc:
        raise EventLogError(f"cannot read file ({exc})", source=source) from None
    if b"\x00" in head:
        kind = " (it looks like Parquet: name it .parquet)" if head.startswith(b"PAR1") else ""
        raise EventLogError(
            f"binary content, not CSV text{kind}: an event log CSV is UTF-8 text with a header "
            "line",
            source=source,
        )


def _skip_row(row: Any) -> str:
    return "skip"


def _read_csv_malformed(
    p: Path, source: str, names: list[str], convert: Any, skip_invalid: bool
) -> tuple[pa.Table, np.ndarray | None, int]:
    """Re-read single-threaded, where pyarrow knows row numbers: name the first row with the
    wrong number of fields, or (``skip_invalid``) skip and count every such row and keep the
    original numbers of the others."""
    import pyarrow.csv as pacsv

    bad: list[int] = []

    def handler(row: Any) -> str:
        bad.append(row.number or 0)
        return "skip"

    options: dict[str, Any] = {"invalid_row_handler": handler} if skip_invalid else {}
    try:
        with _quiet_row_decoding():
            table = pacsv.read_csv(
                p,
                read_options=pacsv.ReadOptions(use_threads=False),
                parse_options=pacsv.ParseOptions(newlines_in_values=True, **options),
                convert_options=convert,
            )
    except MemoryError:
        raise
    except Exception as exc:
        raise _csv_error(exc, source, names) from None
    if not bad:  # the multi-threaded reader's error did not reproduce: plain numbering
        return table, None, 0
    skipped = np.array(sorted(n - 1 for n in bad if n > 0), dtype=np.int64)
    total = table.num_rows + len(bad)
    rows = np.setdiff1d(np.arange(1, total + 1, dtype=np.int64), skipped)
    if len(rows) != table.num_rows:  # a row number was unknown: number the kept rows in order
        rows = np.arange(1, table.num_rows + 1, dtype=np.int64)
    return table, rows, len(bad)


@contextlib.contextmanager
def _quiet_row_decoding() -> Iterator[None]:
    """pyarrow decodes a malformed row's text as UTF-8 before calling the row handler; when
    that fails it prints a traceback through ``sys.unraisablehook`` and then raises a parse
    error, which we report. Silence only that traceback, only while reading."""
    previous = sys.unraisablehook

    def hook(info: Any) -> None:
        if not isinstance(info.exc_value, UnicodeDecodeError):
            previous(info)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def _csv_error(exc: BaseException, source: str, names: list[str] | None = None) -> EventLogError:
    text = str(exc).strip() or type(exc).__name__
    m = re.search(r"Row #(\d+): Expected (\d+) columns, got (\d+)", text)
    if m:  # pyarrow counts the header as row 1
        return EventLogError(
            f"malformed CSV row: expected {m.group(2)} fields, got {m.group(3)}",
            source=source,
            row=int(m.group(1)) - 1,
        )
    if "Empty CSV file" in text:
        return EventLogError("empty file: expected a CSV header and data rows", source=source)
    m = re.search(r"In CSV column #(\d+): .*invalid UTF8", text)
    if m:
        column = names[int(m.group(1))] if names and int(m.group(1)) < len(names) else None
        return EventLogError("not valid UTF-8 text", source=source, column=column)
    if isinstance(exc, OSError):
        return EventLogError(f"cannot read file ({text})", source=source)
    return EventLogError(f"not a readable CSV file ({text})", source=source)


def _check_names(names: list[str], source: str) -> None:
    if len(names) == 1:  # a header that does not split on commas: say why before "missing user_id"
        sep = next((c for c in (";", "\t", "|") if c in names[0]), None)
        if sep is not None:
            shown = {"\t": "tab"}.get(sep, repr(sep))
            raise EventLogError(
                f"the CSV header {_show(names[0])} does not split on commas; it seems to use "
                f"{shown} as the separator: an event log CSV is comma-separated",
                source=source,
            )
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise EventLogError("duplicate column name", source=source, column=n)
        seen.add(n)


def _infer_context(col: pa.ChunkedArray) -> pd.Series:
    """A context column read as text becomes int64/float64 when every value is a number,
    otherwise stays text (converted to object with None by ``_context``)."""
    if col.null_count < len(col):
        for typ in (pa.int64(), pa.float64()):
            try:
                return pc.cast(col, typ).to_pandas()
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
    return col.to_pandas() if col.null_count < len(col) else _nones(len(col))


def read_parquet(p: Path, source: str) -> pd.DataFrame:
    """The raw frame of a Parquet log (id columns as text), before validation."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except MemoryError:
        raise
    except Exception as exc:
        text = str(exc).strip() or type(exc).__name__
        raise EventLogError(f"not a readable Parquet file ({text})", source=source) from None
    _check_names(table.schema.names, source)
    columns: dict[str, Any] = {}
    for name, col in zip(table.schema.names, table.columns, strict=True):
        typ = col.type
        if name in ID_COLUMNS and not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
            try:
                col = pc.cast(col, pa.string())
            except Exception:
                raise EventLogError(
                    f"cannot read {name} as text (type {typ})", source=source, column=name
                ) from None
        try:
            columns[name] = col.to_pandas()
        except MemoryError:
            raise
        except Exception as exc:
            raise EventLogError(f"cannot read column ({exc})", source=source, column=name) from None
    return pd.DataFrame(columns, columns=list(table.schema.names), copy=False)


# -- validation --------------------------------------------------------------------------------
def validate_frame(
    df: pd.DataFrame,
    catalog: Catalog,
    *,
    source: str,
    skip_invalid: bool = False,
    rows: np.ndarray | None = None,
) -> EventLog:
    """Validate and normalise an in-memory frame.

    Rows are numbered 1..n in the given order, or by ``rows`` (the numbers errors and the
    ``row`` column report: the Dask reader passes each row's global key). An input column
    ``row`` is ignored.
    """
    return _validate(df, catalog, source=source, skip_invalid=skip_invalid, rows=rows)


def _validate(
    df: pd.DataFrame,
    catalog: Catalog,
    *,
    source: str,
    skip_invalid: bool,
    rows: np.ndarray | None = None,
    pre_skipped: int = 0,
) -> EventLog:
    names = [str(c) for c in df.columns]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise EventLogError("duplicate column name", source=source, column=dup)
    for col in REQUIRED:
        if col not in names:
            found = ", ".join(repr(n) for n in names[:12]) or "none"
            raise EventLogError(
                f"missing required column {col!r} (columns found: {found})",
                source=source,
                column=col,
            )
    n = len(df)
    if n == 0 and not pre_skipped:
        raise EventLogError("the event log has no data rows", source=source)
    df = df.set_axis(names, axis=1).reset_index(drop=True)
    if rows is None:
        rows = np.arange(1, n + 1, dtype=np.int64)

    user_id = _as_str(df["user_id"], source)
    step = _as_str(df["step"], source)
    outcome = _as_str(df["outcome"], source)
    ts, ts_bad = _parse_ts(df["ts"], source)
    if "propensity" in df:
        propensity, prop_bad = _parse_propensity(df["propensity"], source)
    else:
        propensity, prop_bad = np.full(n, np.nan), np.zeros(n, dtype=bool)

    checks = [
        (user_id.isna() | (user_id.str.strip() == "")).to_numpy(dtype=bool),
        (~step.isin(catalog.ids)).to_numpy(dtype=bool),
        (~outcome.isin(OUTCOMES)).to_numpy(dtype=bool),
        ts_bad,
        prop_bad,
        (user_id.str.len() > MAX_ID_LENGTH).fillna(False).to_numpy(dtype=bool),
    ]
    reason = np.zeros(n, dtype=np.int8)  # index into REASONS; 0 (malformed_row) means valid here
    for k in range(len(checks) - 1, -1, -1):  # last check first, so the first failing one wins
        reason[checks[k]] = k + 1
    after = _after_conversion(user_id, step, outcome, ts, rows, reason == 0, catalog)
    reason[after] = len(checks) + 1
    reason[_unavailable(df, step, reason == 0, catalog)] = len(checks) + 2

    invalid = reason != 0
    if invalid.any() and not skip_invalid:
        i = int(np.argmax(invalid))
        _raise_for_row(i, reason, df, rows, ts, user_id, step, outcome, catalog, source)

    context = context_columns(names)
    out: dict[str, Any] = {
        "row": rows,
        "user_id": user_id,
        "ts": ts,
        "step": step,
        "outcome": outcome,
        "propensity": propensity,
        "policy": _as_object_str(df["policy"], source) if "policy" in df else _nones(n),
        "decision_id": (
            _as_object_str(df["decision_id"], source) if "decision_id" in df else _nones(n)
        ),
    }
    for c in context:
        out[c] = _context(df[c])
    frame = pd.DataFrame(out, copy=False)  # no consolidation copy of the object columns
    counts = np.bincount(reason, minlength=len(REASONS))
    skipped = {r: int(c) for r, c in zip(REASONS, counts, strict=True) if c and r != REASONS[0]}
    if pre_skipped:
        skipped = {REASONS[0]: pre_skipped, **skipped}
    if invalid.any():
        frame = frame.loc[~invalid].reset_index(drop=True)
    n_skipped = sum(skipped.values())
    if frame.empty:
        detail = ", ".join(f"{k} {v}" for k, v in skipped.items())
        raise EventLogError(
            f"no valid rows left after skipping {n_skipped} ({detail})", source=source
        )
    return EventLog(
        frame=frame, source=source, context_columns=context, n_skipped=n_skipped, skipped=skipped
    )


def _as_str(s: pd.Series, source: str) -> pd.Series:
    """Normalise an id column to pandas ``str`` (fast, compact; NaN for missing)."""
    if s.dtype == STR_DTYPE:
        return s
    try:
        if isinstance(s.dtype, pd.CategoricalDtype):
            s = s.astype(object)
        return s.astype(STR_DTYPE)
    except MemoryError:
        raise
    except Exception as exc:
        raise EventLogError(
            f"cannot read as text ({exc})", source=source, column=str(s.name)
        ) from None


def _as_object_str(s: pd.Series, source: str) -> pd.Series:
    """Optional id columns: object dtype holding str or None."""
    if s.dtype == object and pd.api.types.infer_dtype(s, skipna=True) in ("string", "empty"):
        return _nan_to_none(s.to_numpy(copy=True))
    return _arrow_to_object(_arrow(_as_str(s, source)))


def _nan_to_none(values: np.ndarray) -> pd.Series:
    values[pd.isna(values)] = None
    return pd.Series(values, dtype=object)


def _arrow_to_object(arr: pa.ChunkedArray) -> pd.Series:
    """Text to object dtype with None for missing. Repeated values (policy names, channels)
    share one Python string each: dictionary-encode, then take, instead of building millions
    of equal strings."""
    n = len(arr)
    if n > 20_000:
        sample = arr.slice(0, 10_000)
        if pc.count_distinct(sample, mode="all").as_py() * 4 < len(sample):
            enc = pc.dictionary_encode(arr.combine_chunks())
            uniques = enc.dictionary.to_numpy(zero_copy_only=False)
            lookup = np.append(uniques.astype(object), None)
            idx = pc.fill_null(enc.indices, len(uniques)).to_numpy(zero_copy_only=False)
            return pd.Series(lookup[idx], dtype=object)
    return pd.Series(arr.to_numpy(zero_copy_only=False), dtype=object)


def _nones(n: int) -> pd.Series:
    return pd.Series(np.full(n, None, dtype=object), dtype=object)


def _context(s: pd.Series) -> pd.Series:
    """Strings become object with None for missing; everything else stays as it is."""
    s = s.reset_index(drop=True)
    if isinstance(s.dtype, pd.StringDtype):
        return _arrow_to_object(_arrow(s.astype(STR_DTYPE)))
    if isinstance(s.dtype, pd.CategoricalDtype) and not pd.api.types.is_numeric_dtype(
        s.dtype.categories.dtype
    ):
        return _nan_to_none(s.astype(object).to_numpy(copy=True))
    if s.dtype == object:
        return _nan_to_none(s.to_numpy(copy=True))
    return s


def _arrow(s: pd.Series) -> pa.ChunkedArray:
    """The pyarrow data behind a pandas ``str`` Series (no copy)."""
    arr = pa.array(s)
    return arr if isinstance(arr, pa.ChunkedArray) else pa.chunked_array([arr])


def _to_arrow_text(s: pd.Series, source: str) -> pa.ChunkedArray:
    """Trimmed text with empty strings as nulls."""
    arr = _arrow(_as_str(s, source))
    arr = pc.utf8_trim_whitespace(arr)
    return pc.if_else(pc.equal(arr, ""), pa.scalar(None, arr.type), arr)


def _parse_ts(s: pd.Series, source: str) -> tuple[np.ndarray, np.ndarray]:
    """UTC epoch seconds (float64) and a mask of rows that are not a time.

    Accepts numbers (epoch seconds), datetimes (naive = UTC), and text holding either. The
    common cases (all numbers, all ISO with a zone, all naive ISO) are one pyarrow cast; mixed
    or broken columns fall back to a per-kind split, still column-wise.
    """
    dtype = s.dtype
    if pd.api.types.is_bool_dtype(dtype):
        out = np.full(len(s), np.nan)
    elif pd.api.types.is_numeric_dtype(dtype):
        out = s.to_numpy(dtype=np.float64, na_value=np.nan)
    elif pd.api.types.is_datetime64_any_dtype(dtype):
        d = s.dt.tz_convert("UTC").dt.tz_localize(None) if s.dt.tz is not None else s
        out = _datetimes_to_epoch(d)
    else:
        out = _parse_ts_text(_to_arrow_text(s, source))
    with np.errstate(invalid="ignore"):
        bad = ~((out >= _TS_MIN) & (out <= _TS_MAX))  # also NaN and +-inf
    return out, bad


def _datetimes_to_epoch(d: pd.Series) -> np.ndarray:
    us = d.dt.as_unit("us").to_numpy(dtype="datetime64[us]")
    out = us.view(np.int64).astype(np.float64) / 1e6
    out[np.isnat(us)] = np.nan
    return out


def _arrow_to_float(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)


def _timestamps_to_epoch(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return _arrow_to_float(pc.cast(arr, pa.int64())) / 1e6


def _parse_ts_text(arr: pa.ChunkedArray) -> np.ndarray:
    for target in (pa.float64(), pa.timestamp("us", tz="UTC"), pa.timestamp("us")):
        try:
            cast = pc.cast(arr, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        return _arrow_to_float(cast) if target == pa.float64() else _timestamps_to_epoch(cast)
    # Mixed or broken: numbers by pattern, everything else through pandas' ISO-8601 parser.
    out = np.full(len(arr), np.nan)
    present = pc.fill_null(pc.is_valid(arr), False).to_numpy(zero_copy_only=False)
    numeric = pc.fill_null(pc.match_substring_regex(arr, _NUMBER_RE), False)
    numeric_np = numeric.to_numpy(zero_copy_only=False)
    if numeric_np.any():
        out[numeric_np] = _safe_float(pc.filter(arr, numeric))
    rest = present & ~numeric_np
    if rest.any():
        text = pc.filter(arr, pa.array(rest)).to_pandas()
        out[rest] = _iso_to_epoch(text)
    return out


def _safe_float(arr: pa.ChunkedArray) -> np.ndarray:
    try:
        return _arrow_to_float(pc.cast(arr, pa.float64()))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pd.to_numeric(arr.to_pandas(), errors="coerce").to_numpy(dtype=np.float64)


def _iso_to_epoch(text: pd.Series) -> np.ndarray:
    """pandas' ISO-8601 parser (offsets converted, naive = UTC); NaN where it is not a time."""
    try:
        d = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
        return _datetimes_to_epoch(d.dt.tz_localize(None))
    except (ValueError, TypeError, OverflowError):
        # A parser corner case on pathological input: parse the distinct values one by one.
        uniq = pd.unique(text.to_numpy(dtype=object))
        parsed = {u: _one_iso(u) for u in uniq}
        return text.map(parsed).to_numpy(dtype=np.float64, na_value=np.nan)


def _one_iso(value: object) -> float:
    try:
        t = pd.Timestamp(str(value))
        if t is pd.NaT:
            return np.nan
        t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
        return (t - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    except (ValueError, TypeError, OverflowError):
        return np.nan


def _parse_propensity(s: pd.Series, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Float64 propensity (NaN = absent) and a mask of present values outside (0, 1]."""
    dtype = s.dtype
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        p = s.to_numpy(dtype=np.float64, na_value=np.nan)
        present = ~np.isnan(p)
    elif pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_datetime64_any_dtype(dtype):
        p = np.full(len(s), np.nan)
        present = s.notna().to_numpy(dtype=bool)
    else:
        arr = _to_arrow_text(s, source)
        present = pc.fill_null(pc.is_valid(arr), False).to_numpy(zero_copy_only=False)
        try:
            p = _arrow_to_float(pc.cast(arr, pa.float64()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            numeric = pc.fill_null(pc.match_substring_regex(arr, _NUMBER_RE), False)
            p = np.full(len(arr), np.nan)
            mask = numeric.to_numpy(zero_copy_only=False)
            if mask.any():
                p[mask] = _safe_float(pc.filter(arr, numeric))
    with np.errstate(invalid="ignore"):
        bad = present & ~((p > 0) & (p <= 1))
    return np.where(bad, np.nan, p), bad


def _after_conversion(
    user_id: pd.Series,
    step: pd.Series,
    outcome: pd.Series,
    ts: np.ndarray,
    rows: np.ndarray,
    valid: np.ndarray,
    catalog: Catalog,
) -> np.ndarray:
    """Rows that come after the user's first accepted goal, in (ts, row) order, among valid
    rows. No sort of the whole log: the first conversion per user is found on the (small) set
    of conversions and looked up by user."""
    goals = [catalog.ids[i] for i in catalog.goal_indices]
    conv = (
        valid & step.isin(goals).to_numpy(dtype=bool) & (outcome == "accepted").to_numpy(dtype=bool)
    )
    after = np.zeros(len(ts), dtype=bool)
    if not conv.any():
        return after
    first = (
        pd.DataFrame({"user_id": user_id[conv].to_numpy(), "ts": ts[conv], "row": rows[conv]})
        .sort_values(["ts", "row"], kind="stable")
        .drop_duplicates("user_id")
    )
    users = _arrow(user_id)
    where = pc.index_in(users, value_set=pa.array(first["user_id"], users.type))
    idx = pc.fill_null(where, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    has = valid & (idx >= 0)
    cts = first["ts"].to_numpy()[idx[has]]
    crow = first["row"].to_numpy()[idx[has]]
    t, r = ts[has], rows[has]
    after[has] = (t > cts) | ((t == cts) & (r > crow))
    return after


def _unavailable(
    df: pd.DataFrame, step: pd.Series, valid: np.ndarray, catalog: Catalog
) -> np.ndarray:
    """Valid rows offering a step whose ``available_when`` rules the row's own context value
    excludes. A row without a value for the rule's column (or a log without the column) is not
    judged: the log does not say."""
    bad = np.zeros(len(df), dtype=bool)
    if not catalog.has_availability:
        return bad
    for i, rules in enumerate(catalog.rules):
        if not rules:
            continue
        mine = valid & (step == catalog.ids[i]).to_numpy(dtype=bool)
        if not mine.any():
            continue
        idx = np.flatnonzero(mine)
        for rule in rules:
            if rule.column not in df.columns:
                continue
            codes, uniques = pd.factorize(df[rule.column].iloc[idx], sort=False)
            verdict = np.array(
                [not missing_value(u) and not rule.allows(u) for u in uniques] + [False], dtype=bool
            )
            bad[idx[verdict[codes]]] = True
    return bad


def _show(value: object, limit: int = 40) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "empty"
    text = repr(str(value)) if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _raise_for_row(
    i: int,
    reasons: np.ndarray,
    df: pd.DataFrame,
    rows: np.ndarray,
    ts: np.ndarray,
    user_id: pd.Series,
    step: pd.Series,
    outcome: pd.Series,
    catalog: Catalog,
    source: str,
) -> None:
    """Build the one error message for the first bad row (only this row is inspected)."""
    row = int(rows[i])
    reason = REASONS[reasons[i]]

    def fail(column: str, message: str) -> None:
        raise EventLogError(message, source=source, row=row, column=column)

    if reason == "empty_user_id":
        fail("user_id", "user_id is empty")
    if reason == "unknown_step":
        value = df["step"].iloc[i]
        if pd.isna(value) or not str(value).strip():
            fail("step", "step is empty")
        known = ", ".join(catalog.ids[:6]) + (", …" if len(catalog.ids) > 6 else "")
        close = difflib.get_close_matches(str(value), catalog.ids, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        fail("step", f"unknown step {_show(value)} (known steps: {known}){hint}")
    if reason == "unknown_outcome":
        value = df["outcome"].iloc[i]
        fail("outcome", f"unknown outcome {_show(value)} (expected one of {', '.join(OUTCOMES)})")
    if reason == "bad_ts":
        value = df["ts"].iloc[i]
        if isinstance(value, str):
            value = value.strip() or None
        if np.isfinite(ts[i]):  # read, but outside the accepted range
            number = _maybe_number(value)
            hint = "; milliseconds?" if number is not None and ts[i] > TS_MAX else ""
            fail("ts", f"ts {_show(value)} is outside {TS_RANGE_TEXT}{hint}")
        fail(
            "ts",
            f"cannot read ts {_show(value)}: expected ISO-8601 (e.g. 2025-03-04T10:11:12Z) "
            "or epoch seconds",
        )
    if reason == "long_id":
        length = len(str(df["user_id"].iloc[i]))
        fail(
            "user_id", f"user_id has {length} characters; at most {MAX_ID_LENGTH} (the API's limit)"
        )
    if reason == "bad_propensity":
        value = df["propensity"].iloc[i]
        fail("propensity", f"propensity must be a number in (0, 1], got {_show(value)}")
    if reason == "after_conversion":
        uid = user_id.iloc[i]
        goals = [catalog.ids[g] for g in catalog.goal_indices]
        conv = np.flatnonzero(
            (reasons == 0)
            & (user_id == uid).to_numpy(dtype=bool)
            & step.isin(goals).to_numpy(dtype=bool)
            & (outcome == "accepted").to_numpy(dtype=bool)
        )
        first = conv[np.lexsort((rows[conv], ts[conv]))[0]]
        fail(
            "step",
            f"user {_show(uid)} already converted (accepted goal {_show(step.iloc[first])} "
            f"at row {int(rows[first])}); nothing may be offered after that, got step "
            f"{_show(step.iloc[i])}",
        )
    if reason == "unavailable_step":
        sid = step.iloc[i]
        for rule in catalog.rules[catalog.index[sid]]:
            if rule.column in df.columns:
                value = df[rule.column].iloc[i]
                if not missing_value(value) and not rule.allows(value):
                    fail(
                        rule.column,
                        f"step {_show(sid)} is not available when {rule.column} is "
                        f"{_show(value)} (its available_when: {rule.describe()})",
                    )
    raise AssertionError(f"unhandled reason {reason}")  # pragma: no cover


def _maybe_number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None


# -- writing -----------------------------------------------------------------------------------
def write_events(frame: pd.DataFrame | EventLog, path: str | Path) -> None:
    """Write a validated frame as CSV (ts as ISO-8601 UTC with ``Z``) or Parquet (ts as float64
    epoch seconds, lossless), chosen by extension. ``row`` is not written; the result loads
    back with ``load_events`` to the same frame."""
    if isinstance(frame, EventLog):
        frame = frame.frame
    source = str(path)
    p = Path(path)
    kind = file_kind(p, source)
    df = frame.drop(columns=["row"], errors="ignore")
    for col in REQUIRED:
        if col not in df:
            raise EventLogError(f"missing required column {col!r}", source=source, column=col)
    try:
        ts = np.asarray(df["ts"], dtype=np.float64)
    except (TypeError, ValueError):
        raise EventLogError(
            "ts must be epoch seconds (float)", source=source, column="ts"
        ) from None
    if not np.all((ts >= _TS_MIN) & (ts <= _TS_MAX)):
        raise EventLogError(
            f"ts must be finite epoch seconds in {TS_RANGE_TEXT}", source=source, column="ts"
        )
    try:
        if kind == "csv":
            import pyarrow.csv as pacsv

            table = pa.Table.from_pandas(df.drop(columns=["ts"]), preserve_index=False)
            table = table.add_column(list(df.columns).index("ts"), "ts", _format_ts_arrow(ts))
            if p.name.lower().endswith(".gz"):
                with pa.CompressedOutputStream(str(p), "gzip") as out:
                    pacsv.write_csv(table, out)
            else:
                pacsv.write_csv(table, str(p))
        else:
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(df.assign(ts=ts), preserve_index=False)
            pq.write_table(table, str(p))
    except MemoryError:
        raise
    except EventLogError:
        raise
    except Exception as exc:
        raise EventLogError(f"cannot write event log ({exc})", source=source) from None


def format_ts(ts: np.ndarray) -> np.ndarray:
    """Epoch seconds as ISO-8601 UTC strings (``2025-03-04T10:11:12Z``, microseconds only when
    not zero), as an object array."""
    return _format_ts_arrow(ts).to_numpy(zero_copy_only=False)


def _format_ts_arrow(ts: np.ndarray) -> pa.Array:
    """Vectorised with pyarrow casts (numpy's datetime_as_string and strftime are several times
    slower on millions of rows)."""
    us = np.round(np.asarray(ts, dtype=np.float64) * 1e6).astype(np.int64)
    whole = us // 1_000_000
    text = pc.cast(pa.array(whole, pa.timestamp("s")), pa.string())
    frac = us != whole * 1_000_000
    if frac.any():
        text_us = pc.cast(pa.array(us, pa.timestamp("us")), pa.string())
        text = pc.if_else(pa.array(frac), text_us, text)
    text = pc.replace_substring(text, " ", "T", max_replacements=1)
    return pc.binary_join_element_wise(text, "Z", "")
