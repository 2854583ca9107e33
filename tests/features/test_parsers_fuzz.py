"""Fuzzing both parsers: whatever the bytes, the only exceptions that may escape are
``InputError`` subclasses (the CLI turns those into one line and exit code 2; anything else
would be a traceback)."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.catalog import Catalog, load_catalog
from features.errors import InputError
from features.events import OPTIONAL, REQUIRED, EventLog, load_events, validate_frame

_EXAMPLES = int(os.environ.get("NEXTSTEP_FUZZ_EXAMPLES", "200"))  # raise it to hunt bugs
FUZZ = settings(
    max_examples=_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# Loading a log costs a few ms of fixed pandas/pyarrow overhead: fewer examples, same reach.
FUZZ_LOGS = settings(FUZZ, max_examples=max(1, _EXAMPLES // 2))

CATALOG = Catalog.from_data(
    [
        {"id": "intro", "stage": "start", "effort": 1},
        {"id": "tip", "stage": "deliver", "effort": 1},
        {"id": "quiz", "stage": "guide", "effort": 2, "requires": ["intro"]},
        {"id": "buy", "stage": "convert", "effort": 5, "requires": ["quiz"]},
    ]
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# -- catalogs ------------------------------------------------------------------------------------
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["start", "deliver", "guide", "build", "convert", "intro", "buy", "a"]),
)
keys = st.one_of(
    st.sampled_from(["id", "stage", "effort", "value", "requires", "steps", "title"]),
    st.text(max_size=6),
)
yamlish = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=6)),
    max_leaves=15,
)
step_ids = st.sampled_from(["a", "b", "c", "d"])
near_valid_step = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(step_ids, scalars),
        "stage": st.one_of(
            st.sampled_from(["start", "deliver", "guide", "build", "convert"]), scalars
        ),
        "effort": st.one_of(st.floats(min_value=-2, max_value=5), scalars),
        "value": st.one_of(st.floats(min_value=-1, max_value=5), scalars),
        "requires": st.one_of(st.lists(st.one_of(step_ids, scalars), max_size=3), scalars),
        "title": yamlish,
    },
)
catalog_data = st.one_of(
    yamlish,
    st.lists(near_valid_step, max_size=5),
    st.fixed_dictionaries({"steps": st.lists(near_valid_step, max_size=5)}),
)


def _check_catalog(call: Any) -> None:
    try:
        cat = call()
    except InputError:
        return
    assert isinstance(cat, Catalog)
    assert len(cat) > 0 and cat.goal_indices  # accepted catalogs satisfy the contract
    assert cat.eligible_indices(0) is not None


@FUZZ
@given(data=catalog_data)
def test_catalog_from_data_raises_only_input_errors(data: Any) -> None:
    _check_catalog(lambda: Catalog.from_data(data))


@FUZZ
@given(data=catalog_data, suffix=st.sampled_from([".yaml", ".json"]))
def test_catalog_files_raise_only_input_errors(workdir: Path, data: Any, suffix: str) -> None:
    path = workdir / f"catalog{suffix}"
    text = yaml.safe_dump(data) if suffix == ".yaml" else _json_or_repr(data)
    path.write_text(text, encoding="utf-8")
    _check_catalog(lambda: load_catalog(path))


@FUZZ
@given(raw=st.binary(max_size=300), suffix=st.sampled_from([".yaml", ".yml", ".json"]))
def test_catalog_random_bytes_raise_only_input_errors(
    workdir: Path, raw: bytes, suffix: str
) -> None:
    path = workdir / f"bytes{suffix}"
    path.write_bytes(raw)
    _check_catalog(lambda: load_catalog(path))


def _json_or_repr(data: Any) -> str:
    import json

    try:
        return json.dumps(data)  # NaN/Infinity become non-standard JSON literals: fine to fuzz
    except (TypeError, ValueError):
        return repr(data)


# -- event logs ----------------------------------------------------------------------------------
cells = st.one_of(
    st.sampled_from(["intro", "tip", "quiz", "buy", "nope", ""]),
    st.sampled_from(["accepted", "declined", "dropped", "Accepted"]),
    st.sampled_from(
        ["2025-03-04T10:11:12Z", "2025-03-04T10:11:12+02:00", "2025-03-04", "2025-02-30T00:00:00"]
    ),
    st.sampled_from(["1741083072", "1741083072.5", "1e15", "-1", "nan", "inf", "0", "1", "0.5"]),
    st.sampled_from(["u1", "u2", "007", " ", "NA", "null"]),
    st.text(max_size=10),
    st.integers().map(str),
    st.floats().map(repr),
)
column_names = st.one_of(
    st.sampled_from([*REQUIRED, *OPTIONAL, "channel", "row", ""]), st.text(max_size=6)
)


@st.composite
def csv_logs(draw: st.DrawFn) -> str:
    names = draw(
        st.one_of(
            st.just([*REQUIRED, "propensity"]),
            st.lists(column_names, min_size=1, max_size=7),
        )
    )
    n_rows = draw(st.integers(min_value=0, max_value=8))
    rows = [
        draw(st.lists(cells, min_size=len(names) - 1, max_size=len(names) + 1))
        for _ in range(n_rows)
    ]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerow(names)
    writer.writerows(rows)
    return out.getvalue()


def _check_log(call: Any) -> None:
    try:
        log = call()
    except InputError:
        return
    assert isinstance(log, EventLog)
    df = log.frame
    assert list(df.columns[:8]) == ["row", "user_id", "ts", "step", "outcome", *OPTIONAL]
    assert len(df) > 0
    assert df["row"].is_monotonic_increasing
    assert df["step"].isin(CATALOG.ids).all()
    assert df["ts"].map(math.isfinite).all()
    prop = df["propensity"].dropna()
    assert ((prop > 0) & (prop <= 1)).all()


@FUZZ_LOGS
@given(text=csv_logs(), skip=st.booleans(), gz=st.booleans())
def test_csv_logs_raise_only_input_errors(workdir: Path, text: str, skip: bool, gz: bool) -> None:
    path = workdir / ("events.csv.gz" if gz else "events.csv")
    data = text.encode("utf-8", errors="surrogatepass")
    if gz:
        import gzip

        data = gzip.compress(data)
    path.write_bytes(data)
    _check_log(lambda: load_events(path, CATALOG, skip_invalid=skip))


@FUZZ_LOGS
@given(
    raw=st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=200).map(lambda b: b"user_id,ts,step,outcome\n" + b),
    ),
    skip=st.booleans(),
    suffix=st.sampled_from([".csv", ".parquet"]),
)
def test_random_bytes_raise_only_input_errors(
    workdir: Path, raw: bytes, skip: bool, suffix: str
) -> None:
    path = workdir / f"bytes{suffix}"
    path.write_bytes(raw)
    _check_log(lambda: load_events(path, CATALOG, skip_invalid=skip))


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**62), max_value=2**62),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(["intro", "buy", "accepted", "declined", "u1", "2025-03-04T10:11:12Z"]),
)


@FUZZ_LOGS
@given(
    columns=st.dictionaries(
        st.sampled_from([*REQUIRED, *OPTIONAL, "channel", "row"]),
        st.lists(values, min_size=3, max_size=3),
        min_size=1,
    ),
    skip=st.booleans(),
)
def test_in_memory_frames_raise_only_input_errors(
    columns: dict[str, list[Any]], skip: bool
) -> None:
    frame = pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in columns.items()})
    _check_log(lambda: validate_frame(frame, CATALOG, source="fuzz", skip_invalid=skip))


@FUZZ_LOGS
@given(
    ts=st.lists(
        st.one_of(st.floats(), st.integers(min_value=-(10**12), max_value=10**12)),
        min_size=1,
        max_size=20,
    ),
    prop=st.floats(),
)
def test_numeric_columns_raise_only_input_errors(ts: list[float], prop: float) -> None:
    n = len(ts)
    frame = pd.DataFrame(
        {
            "user_id": ["u"] * n,
            "ts": np.array(ts, dtype=np.float64),
            "step": ["intro"] * n,
            "outcome": ["declined"] * n,
            "propensity": [prop] * n,
        }
    )
    _check_log(lambda: validate_frame(frame, CATALOG, source="fuzz", skip_invalid=True))
