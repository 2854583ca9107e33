"""Event-log contract (docs/design.md section 4): every bad input is reported with file, row and
column (or dropped and counted with --skip-invalid); good logs load with the documented
columns and dtypes, in file order, and round-trip through write_events."""

from __future__ import annotations

import gzip
import math
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.catalog import Catalog, load_catalog
from features.errors import EventLogError, InputError
from features.events import (
    OPTIONAL,
    OUTCOMES,
    REASONS,
    REQUIRED,
    STR_DTYPE,
    EventLog,
    format_ts,
    load_events,
    validate_frame,
    write_events,
)
from nextstep.cli.app import app

CATALOG_YAML = """\
steps:
  - {id: intro, stage: start, effort: 1, title: Read the intro}
  - {id: tip, stage: deliver, effort: 1}
  - {id: quiz, stage: guide, effort: 2, requires: [intro]}
  - {id: account, stage: build, effort: 4, requires: [quiz]}
  - {id: buy, stage: convert, effort: 8, requires: [account]}
  - {id: subscribe, stage: convert, effort: 6, requires: [account]}
"""
HEADER = "user_id,ts,step,outcome,propensity\n"
T0 = 1741083072.0  # 2025-03-04T10:11:12Z


def epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.fixture
def catalog_path(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG_YAML, encoding="utf-8")
    return path


@pytest.fixture
def catalog(catalog_path: Path) -> Catalog:
    return load_catalog(catalog_path)


def write(tmp_path: Path, text: str, name: str = "events.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- every check, table-driven ---------------------------------------------------------------
# (id, CSV text, expected row, expected column, message regex)
BAD_LOGS: list[tuple[str, str, int | None, str, str]] = [
    (
        "missing outcome column",
        "user_id,ts,step\nu1,1,intro\n",
        None,
        "outcome",
        r"missing required column 'outcome' \(columns found: 'user_id', 'ts', 'step'\)",
    ),
    ("missing user_id column", "ts,step,outcome\n1,intro,accepted\n", None, "user_id", r"missing"),
    ("missing ts column", "user_id,step,outcome\nu,intro,accepted\n", None, "ts", r"missing"),
    (
        "empty user_id",
        HEADER + "u1,1,intro,accepted,\n,2,intro,accepted,\n",
        2,
        "user_id",
        r"user_id is empty",
    ),
    (
        "blank user_id",
        HEADER + "u1,1,intro,accepted,\n  ,2,tip,declined,\n",
        2,
        "user_id",
        r"empty",
    ),
    (
        "unknown step",
        HEADER + "u1,1,intro,accepted,\nu1,2,quizz,declined,\n",
        2,
        "step",
        r"unknown step 'quizz' \(known steps: intro, tip, quiz, account, buy, subscribe\); "
        r"did you mean 'quiz'\?",
    ),
    ("empty step", HEADER + "u1,1,,accepted,\n", 1, "step", r"step is empty"),
    ("step with spaces", HEADER + "u1,1, intro,accepted,\n", 1, "step", r"unknown step ' intro'"),
    (
        "unknown outcome",
        HEADER + "u1,1,intro,accepted,\nu2,1,intro,Accepted,\n",
        2,
        "outcome",
        r"unknown outcome 'Accepted' \(expected one of accepted, declined, dropped\)",
    ),
    ("empty outcome", HEADER + "u1,1,intro,,\n", 1, "outcome", r"unknown outcome empty"),
    (
        "ts not a time",
        HEADER + "u1,2025-03-04T10:11:12Z,intro,accepted,\nu1,yesterday,tip,accepted,\n",
        2,
        "ts",
        r"cannot read ts 'yesterday': expected ISO-8601 \(e\.g\. 2025-03-04T10:11:12Z\) "
        r"or epoch seconds",
    ),
    ("ts empty", HEADER + "u1,,intro,accepted,\n", 1, "ts", r"cannot read ts empty"),
    ("ts bad date", HEADER + "u1,2025-02-30T00:00:00Z,intro,accepted,\n", 1, "ts", r"cannot read"),
    ("ts nan", HEADER + "u1,1,intro,accepted,\nu1,nan,tip,accepted,\n", 2, "ts", r"cannot read"),
    ("ts inf", HEADER + "u1,inf,intro,accepted,\n", 1, "ts", r"cannot read ts 'inf'"),
    (
        "ts in milliseconds",
        HEADER + "u1,1741083072000,intro,accepted,\n",
        1,
        "ts",
        r"ts '1741083072000' is outside 1969-12-31T00:00:00Z \.\. 2100-01-02T00:00:00Z; "
        r"milliseconds\?",
    ),
    (
        "ts in year 9999",
        HEADER + "u1,2025-03-04T10:11:12Z,intro,accepted,\nu1,9999-01-01T00:00:00Z,tip,declined,\n",
        2,
        "ts",
        r"ts '9999-01-01T00:00:00Z' is outside 1969-12-31T00:00:00Z \.\. 2100",
    ),
    (
        "user_id longer than the API allows",
        HEADER + "u1,1,intro,accepted,\n" + "x" * 257 + ",2,intro,accepted,\n",
        2,
        "user_id",
        r"user_id has 257 characters; at most 256 \(the API's limit\)",
    ),
    ("ts before 1970", HEADER + "u1,-172800,intro,accepted,\n", 1, "ts", r"'-172800' is outside"),
    (
        "ts after 2100",
        HEADER + "u1,2100-01-03T00:00:00Z,intro,accepted,\n",
        1,
        "ts",
        r"is outside 1969-12-31T00:00:00Z \.\. 2100-01-02T00:00:00Z$",
    ),
    (
        "propensity not a number",
        HEADER + "u1,1,intro,accepted,0.5\nu1,2,tip,accepted,high\n",
        2,
        "propensity",
        r"propensity must be a number in \(0, 1\], got 'high'",
    ),
    ("propensity zero", HEADER + "u1,1,intro,accepted,0\n", 1, "propensity", r"got '0'"),
    ("propensity above one", HEADER + "u1,1,intro,accepted,1.5\n", 1, "propensity", r"'1\.5'"),
    ("propensity negative", HEADER + "u1,1,intro,accepted,-0.2\n", 1, "propensity", r"'-0\.2'"),
    ("propensity nan", HEADER + "u1,1,intro,accepted,NaN\n", 1, "propensity", r"got 'NaN'"),
    (
        "offer after conversion",
        HEADER
        + "u1,1,intro,accepted,\nu1,2,quiz,accepted,\nu1,3,account,accepted,\n"
        + "u1,4,buy,accepted,\nu2,5,intro,accepted,\nu1,6,tip,declined,\n",
        6,
        "step",
        r"user 'u1' already converted \(accepted goal 'buy' at row 4\); nothing may be offered "
        r"after that, got step 'tip'",
    ),
    (
        "second goal after conversion",
        HEADER + "u1,10,subscribe,accepted,\nu1,11,buy,accepted,\n",
        2,
        "step",
        r"already converted \(accepted goal 'subscribe' at row 1\)",
    ),
    (
        "after conversion, rows unsorted",  # the later ts is the offending row, not the later row
        HEADER
        + "u1,30,tip,dropped,\nu1,2025-01-01T00:00:00Z,intro,declined,\nu1,40,buy,accepted,\n",
        2,
        "step",
        r"accepted goal 'buy' at row 3",
    ),
    (
        "after conversion, same ts: file order decides",
        HEADER + "u1,7,intro,declined,\nu1,7,buy,accepted,\nu1,7,tip,declined,\n",
        3,
        "step",
        r"already converted",
    ),
    (
        "first check of the row wins",
        HEADER + "u1,1,intro,accepted,\n,nope,quizz,maybe,7\n",
        2,
        "user_id",
        r"user_id is empty",
    ),
    (
        "smallest row wins",
        HEADER + "u1,1,intro,accepted,2\nu1,x,quizz,accepted,\n",
        1,
        "propensity",
        r"got '2'",
    ),
    (
        "conversion check sees the earliest row",  # row 2 is after row 1's conversion
        HEADER + "u1,1,buy,accepted,\nu1,2,intro,accepted,\nu1,x,intro,accepted,\n",
        2,
        "step",
        r"already converted",
    ),
]


@pytest.mark.parametrize(
    ("text", "row", "column", "pattern"), [pytest.param(*c[1:], id=c[0]) for c in BAD_LOGS]
)
def test_bad_log_names_file_row_and_column(
    tmp_path: Path, catalog: Catalog, text: str, row: int | None, column: str, pattern: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(EventLogError) as info:
        load_events(path, catalog)
    err = info.value
    assert (err.source, err.row, err.column) == (str(path), row, column)
    message = str(err)
    assert message.startswith(str(path))
    if row is not None:
        assert f"row {row}," in message
    assert f"column {column!r}" in message
    assert re.search(pattern, message), message


def test_declined_goal_does_not_convert_and_other_users_are_unaffected(
    tmp_path: Path, catalog: Catalog
) -> None:
    text = (
        HEADER + "u1,1,buy,declined,\nu1,2,intro,accepted,\nu2,3,buy,accepted,\nu1,4,tip,dropped,\n"
    )
    log = load_events(write(tmp_path, text), catalog)
    assert log.frame["row"].tolist() == [1, 2, 3, 4]


def test_malformed_csv_row(tmp_path: Path, catalog: Catalog) -> None:
    text = HEADER + "u1,1,intro,accepted,\nu1,2,tip\nu1,3,tip,declined,\n"
    with pytest.raises(EventLogError, match=r"row 2: malformed CSV row: expected 5 fields, got 3"):
        load_events(write(tmp_path, text), catalog)
    log = load_events(write(tmp_path, text), catalog, skip_invalid=True)
    assert log.frame["row"].tolist() == [1, 3]
    assert log.skipped == {"malformed_row": 1}


@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [
        pytest.param("events.csv", b"", r"empty file", id="empty csv"),
        pytest.param("events.csv", HEADER.encode(), r"no data rows", id="header only"),
        pytest.param("events.csv", b"\n\n", r"empty file", id="blank lines"),
        pytest.param("events.txt", HEADER.encode(), r"unsupported file type", id="extension"),
        pytest.param("events.parquet", HEADER.encode(), r"not a readable Parquet file", id="pq"),
        pytest.param("events.csv.gz", b"not gzip at all", r"cannot read|not a readable", id="gz"),
        pytest.param(
            "events.csv",
            HEADER.encode() + b"u1,1,intro,accept\xe9,\n",
            r"column 'outcome': not valid UTF-8 text",
            id="latin-1 value",
        ),
        pytest.param(
            "events.csv",
            b"user_id,ts,st\xe9p,outcome\nu1,1,intro,accepted\n",
            r"header is not valid UTF-8",
            id="latin-1 header",
        ),
        pytest.param(
            "events.csv",
            b"user_id,ts,step,outcome,user_id\nu1,1,intro,accepted,u2\n",
            r"column 'user_id': duplicate column name",
            id="duplicate column",
        ),
    ],
)
def test_unreadable_files_are_event_log_errors(
    tmp_path: Path, catalog: Catalog, name: str, content: bytes, pattern: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(EventLogError, match=pattern) as info:
        load_events(path, catalog)
    assert info.value.source == str(path)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (bytes(range(256)) * 8, r"binary content, not CSV text: "),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", r"binary content"),
        (b"PAR1\x15\x04\x15\x00", r"it looks like Parquet: name it \.parquet"),
        (b"\x00" * 64, r"binary content"),
    ],
)
def test_a_binary_file_is_named_binary_not_empty(
    tmp_path: Path, catalog: Catalog, content: bytes, pattern: str
) -> None:
    path = tmp_path / "events.csv"
    path.write_bytes(content)
    with pytest.raises(EventLogError, match=pattern) as info:
        load_events(path, catalog)
    assert "empty" not in str(info.value)


@pytest.mark.parametrize(("sep", "shown"), [(";", "';'"), ("\t", "tab"), ("|", "'|'")])
def test_a_header_that_does_not_split_on_commas_names_the_separator(
    tmp_path: Path, catalog: Catalog, sep: str, shown: str
) -> None:
    text = sep.join(["user_id", "ts", "step", "outcome"]) + "\n"
    text += sep.join(["u1", "1", "intro", "accepted"]) + "\n"
    with pytest.raises(EventLogError) as info:
        load_events(write(tmp_path, text), catalog)
    message = str(info.value)
    assert f"seems to use {shown} as the separator" in message
    assert "comma-separated" in message and "missing" not in message


def test_missing_file_and_directory(tmp_path: Path, catalog: Catalog) -> None:
    with pytest.raises(EventLogError, match="file not found"):
        load_events(tmp_path / "nope.csv", catalog)
    folder = tmp_path / "dir.csv"
    folder.mkdir()
    with pytest.raises(EventLogError, match="not a regular file"):
        load_events(folder, catalog)


# -- skip_invalid --------------------------------------------------------------------------------
def test_skip_invalid_drops_and_counts_by_reason(tmp_path: Path, catalog: Catalog) -> None:
    text = HEADER + "\n".join(
        [
            "u1,1,intro,accepted,0.5",  # 1 ok
            ",2,intro,accepted,",  # 2 empty_user_id
            "u1,3,nope,accepted,",  # 3 unknown_step
            "u1,4,tip,won,",  # 4 unknown_outcome
            "u1,soon,tip,accepted,",  # 5 bad_ts
            "u1,6,tip,accepted,2",  # 6 bad_propensity
            "u1,7,quiz,accepted,",  # 7 ok
            "u2,8,subscribe,accepted,",  # 8 ok: converts u2
            "u2,9,intro,declined,",  # 9 after_conversion
            "u2,10,nope,declined,",  # 10 unknown_step (first check wins)
            ",x,nope,won,7",  # 11 empty_user_id
            "u3,12,intro,dropped,1",  # 12 ok
        ]
    )
    log = load_events(write(tmp_path, text + "\n"), catalog, skip_invalid=True)
    assert log.skipped == {
        "empty_user_id": 2,
        "unknown_step": 2,
        "unknown_outcome": 1,
        "bad_ts": 1,
        "bad_propensity": 1,
        "after_conversion": 1,
    }
    assert log.n_skipped == 8
    assert log.frame["row"].tolist() == [1, 7, 8, 12]
    assert log.frame.index.tolist() == [0, 1, 2, 3]
    assert list(log.skipped) == [r for r in REASONS if r in log.skipped]  # check order


def test_skip_invalid_with_nothing_left_is_an_error(tmp_path: Path, catalog: Catalog) -> None:
    path = write(tmp_path, HEADER + "u1,1,nope,accepted,\n")
    with pytest.raises(
        EventLogError, match=r"no valid rows left after skipping 1 \(unknown_step 1\)"
    ):
        load_events(path, catalog, skip_invalid=True)


def test_skip_invalid_on_a_clean_log_skips_nothing(tmp_path: Path, catalog: Catalog) -> None:
    log = load_events(
        write(tmp_path, HEADER + "u1,1,intro,accepted,\n"), catalog, skip_invalid=True
    )
    assert (log.n_skipped, log.skipped) == (0, {})


# -- timestamps ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        pytest.param("2025-03-04T10:11:12Z", T0, id="Z"),
        pytest.param("2025-03-04T12:11:12+02:00", T0, id="+02:00"),
        pytest.param("2025-03-04T05:11:12-05:00", T0, id="-05:00"),
        pytest.param("2025-03-04T10:11:12", T0, id="naive is UTC"),
        pytest.param("2025-03-04 10:11:12", T0, id="naive with space"),
        pytest.param("2025-03-04T10:11:12.250Z", T0 + 0.25, id="fraction"),
        pytest.param("1741083072", T0, id="epoch int"),
        pytest.param("1741083072.75", T0 + 0.75, id="epoch float"),
        pytest.param(" 1741083072 ", T0, id="padded"),
        pytest.param("2025-03-04", epoch("2025-03-04T00:00:00Z"), id="date only"),
    ],
)
def test_ts_formats_land_on_utc_epoch(
    tmp_path: Path, catalog: Catalog, cell: str, expected: float
) -> None:
    log = load_events(write(tmp_path, HEADER + f"u1,{cell},intro,accepted,\n"), catalog)
    assert log.frame["ts"].dtype == np.float64
    assert log.frame["ts"].iloc[0] == pytest.approx(expected, abs=1e-6)


def test_mixed_ts_formats_in_one_column(tmp_path: Path, catalog: Catalog) -> None:
    cells = [
        "2025-03-04T10:11:12Z",
        "1741083073",
        "2025-03-04T12:11:14+02:00",
        "2025-03-04T10:11:15",
    ]
    text = HEADER + "".join(f"u1,{c},tip,declined,\n" for c in cells)
    log = load_events(write(tmp_path, text), catalog)
    np.testing.assert_allclose(log.frame["ts"], T0 + np.arange(4))


def test_format_ts() -> None:
    out = format_ts(np.array([T0, T0 + 0.5, 0.0]))
    assert out.tolist() == [
        "2025-03-04T10:11:12Z",
        "2025-03-04T10:11:12.500000Z",
        "1970-01-01T00:00:00Z",
    ]


# -- shape of a good log -------------------------------------------------------------------------
GOOD = (
    "user_id,ts,step,outcome,propensity,policy,decision_id,channel,score,visits\n"
    "007,2025-03-04T10:11:12Z,intro,accepted,0.25,planner,d-1,web,0.5,3\n"
    "42,2025-03-04T09:00:00Z,tip,declined,,,,,1.5,4\n"
    "007,1741083100,quiz,dropped,1,random,d-3,app,,5\n"
)


def test_good_log_columns_and_dtypes(tmp_path: Path, catalog: Catalog) -> None:
    log = load_events(write(tmp_path, GOOD), catalog)
    df = log.frame
    assert isinstance(log, EventLog)
    assert list(df.columns) == ["row", *REQUIRED[:1], "ts", "step", "outcome", *OPTIONAL,
                                "channel", "score", "visits"]  # fmt: skip
    assert log.context_columns == ["channel", "score", "visits"]
    assert df["row"].dtype == np.int64
    for col in ("user_id", "step", "outcome"):
        assert df[col].dtype == STR_DTYPE
    assert df["ts"].dtype == np.float64
    assert df["propensity"].dtype == np.float64
    for col in ("policy", "decision_id", "channel"):
        assert df[col].dtype == object
    assert df["policy"].tolist() == ["planner", None, "random"]
    assert df["decision_id"].tolist() == ["d-1", None, "d-3"]
    assert df["channel"].tolist() == ["web", None, "app"]
    assert df["score"].dtype == np.float64
    assert math.isnan(df["score"].iloc[2])
    assert df["visits"].dtype == np.int64
    assert df["propensity"].iloc[0] == 0.25
    assert math.isnan(df["propensity"].iloc[1])
    assert (log.n_skipped, log.skipped, log.source) == (0, {}, str(tmp_path / "events.csv"))


def test_original_order_and_string_ids_are_kept(tmp_path: Path, catalog: Catalog) -> None:
    df = load_events(write(tmp_path, GOOD), catalog).frame
    assert df["row"].tolist() == [1, 2, 3]
    assert df["user_id"].tolist() == ["007", "42", "007"]  # not sorted by ts, not 7 or 42.0
    assert df["ts"].tolist() == [T0, epoch("2025-03-04T09:00:00Z"), 1741083100.0]


def test_optional_columns_are_always_present(tmp_path: Path, catalog: Catalog) -> None:
    df = load_events(
        write(tmp_path, "user_id,ts,step,outcome\nu,1,intro,accepted\n"), catalog
    ).frame
    assert list(df.columns) == ["row", "user_id", "ts", "step", "outcome", *OPTIONAL]
    assert df["propensity"].dtype == np.float64 and df["propensity"].isna().all()
    assert df["policy"].dtype == object and df["policy"].tolist() == [None]
    assert df["decision_id"].tolist() == [None]


def test_quoted_newlines_and_commas_in_values(tmp_path: Path, catalog: Catalog) -> None:
    text = 'user_id,ts,step,outcome,note\n"a,b",1,intro,accepted,"two\nlines"\nc,2,tip,dropped,x\n'
    df = load_events(write(tmp_path, text), catalog).frame
    assert df["user_id"].tolist() == ["a,b", "c"]
    assert df["note"].tolist() == ["two\nlines", "x"]
    assert df["row"].tolist() == [1, 2]


# -- writing and round trips ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["out.csv", "out.csv.gz", "out.parquet", "out.pq"])
def test_write_then_load_round_trips(tmp_path: Path, catalog: Catalog, name: str) -> None:
    original = load_events(write(tmp_path, GOOD), catalog)
    path = tmp_path / name
    write_events(original.frame, path)
    again = load_events(path, catalog)
    pd.testing.assert_frame_equal(again.frame, original.frame)
    assert again.context_columns == original.context_columns


def test_written_csv_is_readable_text(tmp_path: Path, catalog: Catalog) -> None:
    log = load_events(write(tmp_path, GOOD), catalog)
    path = tmp_path / "out.csv"
    write_events(log, path)
    text = path.read_text(encoding="utf-8")
    header = text.splitlines()[0].replace('"', "")
    assert header == "user_id,ts,step,outcome,propensity,policy,decision_id,channel,score,visits"
    assert "2025-03-04T10:11:12Z" in text
    assert "row" not in header.split(",")
    gz = tmp_path / "out.csv.gz"
    write_events(log, gz)
    assert gzip.decompress(gz.read_bytes()).decode() == text


def test_fractional_ts_round_trip_to_the_microsecond(tmp_path: Path, catalog: Catalog) -> None:
    frame = pd.DataFrame(
        {
            "user_id": ["a", "a"],
            "ts": [T0 + 0.123456, T0 + 1],
            "step": ["intro", "tip"],
            "outcome": ["accepted", "declined"],
        }
    )
    log = validate_frame(frame, catalog, source="memory")
    write_events(log, tmp_path / "f.csv")
    assert "10:11:12.123456Z" in (tmp_path / "f.csv").read_text()
    back = load_events(tmp_path / "f.csv", catalog).frame["ts"]
    np.testing.assert_allclose(back, log.frame["ts"], rtol=0, atol=1e-6)
    write_events(log, tmp_path / "f.parquet")
    assert (
        load_events(tmp_path / "f.parquet", catalog).frame["ts"].tolist()
        == log.frame["ts"].tolist()
    )


def test_write_refuses_bad_paths_and_frames(tmp_path: Path, catalog: Catalog) -> None:
    log = load_events(write(tmp_path, GOOD), catalog)
    with pytest.raises(EventLogError, match="unsupported file type"):
        write_events(log, tmp_path / "out.xlsx")
    with pytest.raises(EventLogError, match="cannot write"):
        write_events(log, tmp_path / "missing-dir" / "out.csv")
    with pytest.raises(EventLogError, match="missing required column 'step'"):
        write_events(log.frame.drop(columns=["step"]), tmp_path / "out.csv")


# -- frames built in memory ----------------------------------------------------------------------
def test_validate_frame_normalises_in_memory_types(catalog: Catalog) -> None:
    frame = pd.DataFrame(
        {
            "user_id": [7, 8],
            "ts": pd.to_datetime(["2025-03-04T12:11:12+02:00", "2025-03-04T10:11:13Z"], utc=True),
            "step": ["intro", "tip"],
            "outcome": pd.Categorical(["accepted", "dropped"]),
            "propensity": [0.5, np.nan],
            "policy": ["p", np.nan],
            "device": ["ios", np.nan],
            "row": [99, 98],  # reserved: replaced by the position
        }
    )
    log = validate_frame(frame, catalog, source="simulator")
    df = log.frame
    assert df["user_id"].tolist() == ["7", "8"]
    assert df["user_id"].dtype == STR_DTYPE and df["outcome"].dtype == STR_DTYPE
    assert df["ts"].tolist() == [T0, T0 + 1]
    assert df["row"].tolist() == [1, 2]
    assert df["policy"].tolist() == ["p", None]
    assert df["device"].tolist() == ["ios", None]
    assert log.context_columns == ["device"]
    naive = frame.assign(ts=pd.to_datetime(["2025-03-04T10:11:12", "2025-03-04T10:11:13"]))
    assert validate_frame(naive, catalog, source="m").frame["ts"].tolist() == [T0, T0 + 1]


def test_validate_frame_errors_name_the_source(catalog: Catalog) -> None:
    frame = pd.DataFrame({"user_id": ["a"], "ts": [1.0], "step": ["zzz"], "outcome": ["accepted"]})
    with pytest.raises(EventLogError, match=r"^service export, row 1, column 'step': unknown"):
        validate_frame(frame, catalog, source="service export")
    with pytest.raises(EventLogError, match="no data rows"):
        validate_frame(frame.iloc[:0], catalog, source="x")


def test_validate_frame_does_not_modify_its_input(catalog: Catalog) -> None:
    frame = pd.DataFrame(
        {
            "user_id": ["a", "b"],
            "ts": ["1", "2"],
            "step": ["intro", "x"],
            "outcome": ["accepted"] * 2,
        }
    )
    before = frame.copy()
    validate_frame(frame, catalog, source="m", skip_invalid=True)
    pd.testing.assert_frame_equal(frame, before)


def test_outcomes_constant() -> None:
    assert OUTCOMES == ("accepted", "declined", "dropped")
    assert issubclass(EventLogError, InputError)


def test_many_rows_are_checked_column_wise(tmp_path: Path, catalog: Catalog) -> None:
    """200k rows, one conversion per 100 users, one bad row at the end: found, and fast."""
    n = 200_000
    users = np.arange(n) % 1000
    step = np.where(np.arange(n) % 2 == 0, "intro", "tip").astype(object)
    frame = pd.DataFrame(
        {
            "user_id": users.astype(str),
            "ts": T0 + np.arange(n, dtype=float),
            "step": step,
            "outcome": np.where(np.arange(n) % 3 == 0, "accepted", "declined"),
        }
    )
    frame.loc[n - 1, "outcome"] = "nope"
    with pytest.raises(EventLogError, match=f"row {n}, column 'outcome'"):
        validate_frame(frame, catalog, source="big")
    frame.loc[n - 1, "outcome"] = "declined"
    last = np.flatnonzero(users == 5)[-1]
    frame.loc[last - 1000 * 10, ["step", "outcome"]] = ["buy", "accepted"]
    log = validate_frame(frame, catalog, source="big", skip_invalid=True)
    assert log.skipped == {"after_conversion": 10}
    path = tmp_path / "big.csv"
    write_events(log, path)
    assert len(load_events(path, catalog).frame) == n - 10


# -- command line --------------------------------------------------------------------------------
runner = CliRunner()


def test_cli_validate_reports_bad_file_without_traceback(
    tmp_path: Path, catalog_path: Path
) -> None:
    path = write(tmp_path, HEADER + "u1,1,intro,accepted,\nu1,2,quizz,declined,\n")
    result = runner.invoke(app, ["validate", "--events", str(path), "--catalog", str(catalog_path)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    assert str(path) in result.stderr
    assert "row 2" in result.stderr and "column 'step'" in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert result.stdout == ""


def test_cli_validate_bad_catalog(tmp_path: Path) -> None:
    cat = write(tmp_path, "- {id: a, stage: start, effort: 1}\n", "catalog.yaml")
    events = write(tmp_path, HEADER + "u1,1,a,accepted,\n")
    result = runner.invoke(app, ["validate", "--events", str(events), "--catalog", str(cat)])
    assert result.exit_code == 2
    assert "no goal" in result.stderr and "Traceback" not in result.stderr


def test_cli_validate_summary(tmp_path: Path, catalog_path: Path) -> None:
    path = write(tmp_path, GOOD + "x,1,nope,accepted,,,,,,\n")
    args = ["validate", "--events", str(path), "--catalog", str(catalog_path)]
    assert runner.invoke(app, args).exit_code == 2
    result = runner.invoke(app, [*args, "--skip-invalid"])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "rows:    3" in out
    assert "users:   2" in out
    assert "2025-03-04T09:00:00Z .. 2025-03-04T10:11:40Z" in out
    assert "accepted 1 (33.3%), declined 1 (33.3%), dropped 1 (33.3%)" in out
    assert "skipped: 1 (unknown_step 1)" in out
    assert "context: channel, score, visits" in out
