"""The special-case paths of ``build_offline_features`` agree with the online fold.

``test_parity.py`` checks small logs of three users; these cover what it does not reach: many
users, ties, fractional and shuffled timestamps and row numbers, every column dtype the builder
treats differently, user ids the hashing path must refuse, and catalog values whose sums round.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import features.offline as offline
from features.catalog import Catalog
from features.offline import build_offline_features
from features.spec import FeatureSpec, candidate_matrix
from features.state import UserState

CATALOG = Catalog.from_data(
    [
        {"id": "a", "stage": "start", "effort": 1, "value": 1},
        {"id": "b", "stage": "deliver", "effort": 2.5, "value": 2.5},
        {"id": "c", "stage": "build", "effort": 4, "value": 0.75, "requires": ["a"]},
        {"id": "g", "stage": "convert", "effort": 8},
    ]
)
SPEC = FeatureSpec(
    context_columns=("channel", "score"), categories={"channel": ("email", "social")}
)


def online(frame: pd.DataFrame, catalog: Catalog, spec: FeatureSpec) -> tuple[np.ndarray, list]:
    """Fold every user's history with ``UserState.apply``: features and came_back per row."""
    n = len(frame)
    tie = frame["row"].tolist() if "row" in frame.columns else list(range(n))
    users, ts, steps = frame["user_id"].tolist(), frame["ts"].tolist(), frame["step"].tolist()
    outcomes = frame["outcome"].tolist()
    ctx_values = {c: frame[c].tolist() for c in spec.context_columns}
    order = sorted(range(n), key=lambda i: (users[i], ts[i], tie[i]))
    out = np.empty((n, len(spec.names)))
    states: dict[str, UserState] = {}
    came_back = [False] * n
    last: dict[str, int] = {}
    for i in order:
        st = states.setdefault(users[i], UserState())
        ctx = {c: v[i] for c, v in ctx_values.items()}
        step = catalog.index[steps[i]]
        out[i] = candidate_matrix(spec, catalog, st, [step], ts[i], ctx)[0]
        st.apply(catalog, step, outcomes[i], ts[i], ctx)
        if users[i] in last:
            came_back[last[users[i]]] = True
        last[users[i]] = i
    return out, came_back


def random_log(n: int, n_users: int, seed: int, *, ts_scale: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    channel = rng.choice(np.array(["email", "social", "brand-new", None], dtype=object), n)
    score = rng.uniform(0, 10, n)
    score[rng.random(n) < 0.4] = np.nan
    return pd.DataFrame(
        {
            "user_id": [f"user-{u}" for u in rng.integers(0, n_users, n)],
            "ts": 1.7e9 + rng.integers(0, 40, n) * ts_scale,  # many equal timestamps
            "step": rng.choice(["a", "b", "c", "g"], n),
            "outcome": rng.choice(["accepted", "declined", "dropped"], n, p=[0.5, 0.35, 0.15]),
            "channel": pd.Series(channel, dtype=object),
            "score": score,
            "row": np.arange(1, n + 1),
        }
    )


def check(frame: pd.DataFrame, catalog: Catalog = CATALOG, spec: FeatureSpec = SPEC) -> None:
    off = build_offline_features(frame, catalog, spec)
    on, came_back = online(frame, catalog, spec)
    np.testing.assert_array_equal(off.X, on)
    assert off.X.dtype == np.float64 and off.X.flags.c_contiguous
    np.testing.assert_array_equal(off.came_back, came_back)
    np.testing.assert_array_equal(off.accepted, (frame["outcome"] == "accepted").to_numpy())
    np.testing.assert_array_equal(off.dropped, (frame["outcome"] == "dropped").to_numpy())
    assert off.step_index.dtype == np.int64
    np.testing.assert_array_equal(off.step_index, frame["step"].map(catalog.index).to_numpy())


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offline, "_CHUNK", 97)  # several chunks and a partial last one
    monkeypatch.setattr(offline, "_SORTED_CHUNK", 50)  # slices of whole runs


@pytest.mark.parametrize("seed", [0, 1])
def test_many_users_and_ties(seed: int) -> None:
    check(random_log(3000, 400, seed))


@pytest.mark.parametrize("ts_scale", [0.001, 1 / 3, 1e-6])
def test_fractional_timestamps(ts_scale: float) -> None:
    check(random_log(1500, 150, 2, ts_scale=ts_scale))


def test_shuffled_row_numbers_and_no_row_column() -> None:
    frame = random_log(1500, 150, 3)
    frame["row"] = np.random.default_rng(3).permutation(len(frame)) + 1
    check(frame)
    check(random_log(1500, 150, 4).drop(columns="row"))


def test_column_dtypes() -> None:
    frame = random_log(1500, 150, 5)
    for c in ("user_id", "step", "outcome"):
        frame[c] = frame[c].astype(object)  # object columns: the pd.factorize fallbacks
    check(frame)
    frame = random_log(1500, 150, 6)
    frame["channel"] = frame["channel"].astype("category")
    frame["step"] = frame["step"].astype("category")
    check(frame)
    frame = random_log(1500, 150, 7)
    # non-text values in a categorical column are encoded by ``str``, like the service does
    frame["channel"] = pd.Series(
        np.random.default_rng(7).choice(np.array([1, 2.5, "email", None], dtype=object), 1500),
        dtype=object,
    )
    frame["score"] = frame["score"].astype(object)
    check(frame, spec=FeatureSpec(("channel", "score"), {"channel": ("1", "2.5", "email")}))


def test_user_ids_the_hashing_path_refuses_or_must_tell_apart() -> None:
    frame = random_log(1200, 100, 8)
    rng = np.random.default_rng(8)
    ids = np.array(
        ["", "a", "a\0", "a\0\0", "é", "12345678", "123456789", "x" * 16, "x" * 17, "y" * 80]
    )
    frame["user_id"] = pd.Series(ids[rng.integers(0, len(ids), len(frame))], dtype="str")
    check(frame)


def test_user_codes_match_factorize() -> None:
    values = ["", "a", "a\0", "é", "ab" * 4, "ab" * 4 + "c", "z" * 64, "z" * 65, "a", ""]
    col = pd.Series(values * 3, dtype="str")
    np.testing.assert_array_equal(offline._user_codes(col), pd.factorize(col)[0])
    assert offline._hashed_text_codes(col) is None  # longer than 64 bytes: not hashed
    short = pd.Series(values[:6] * 3, dtype="str")
    codes = offline._hashed_text_codes(short)
    assert codes is not None
    np.testing.assert_array_equal(codes, pd.factorize(short)[0])


def test_values_whose_sums_round_use_pandas_cumsum() -> None:
    catalog = Catalog.from_data(
        [
            {"id": "a", "stage": "start", "effort": 1, "value": 0.1},
            {"id": "b", "stage": "deliver", "effort": 2, "value": 0.7},
            {"id": "c", "stage": "build", "effort": 3, "value": 1e-30},
            {"id": "g", "stage": "convert", "effort": 8},
        ]
    )
    frame = random_log(2000, 20, 9)
    off = build_offline_features(frame, catalog, SPEC)
    on, _ = online(frame, catalog, SPEC)
    value = SPEC.names.index("value_received")
    others = [j for j in range(len(SPEC.names)) if j != value]
    np.testing.assert_array_equal(off.X[:, others], on[:, others])
    # online sums one value at a time; pandas' cumsum compensates rounding: equal up to it
    np.testing.assert_allclose(off.X[:, value], on[:, value], rtol=1e-12)
    order = np.lexsort((frame["row"], frame["ts"], frame["user_id"]))
    w = np.where(off.accepted, np.asarray(catalog.values)[off.step_index], 0.0)[order]
    users = frame["user_id"].to_numpy()[order]
    expect = pd.Series(w).groupby(users).cumsum().groupby(users).shift(1, fill_value=0.0)
    np.testing.assert_array_equal(off.X[order, value], expect.to_numpy())


def test_empty_and_single_row() -> None:
    frame = random_log(1, 1, 10)
    check(frame)
    off = build_offline_features(frame.iloc[:0], CATALOG, SPEC)
    assert off.X.shape == (0, len(SPEC.names))


def test_a_user_with_more_events_than_int16_counts() -> None:
    frame = random_log(33_000, 1, 11)  # counts and positions past 32767: int32 blocks
    frame.loc[:99, "user_id"] = "someone-else"
    check(frame)


def test_empty_user_ids_only() -> None:
    col = pd.Series(["", "", ""], dtype="str")
    np.testing.assert_array_equal(offline._user_codes(col), [0, 0, 0])
