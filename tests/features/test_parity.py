"""One definition of point-in-time state, two implementations: they must agree row for row."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from features.catalog import Catalog
from features.offline import build_offline_features
from features.spec import FeatureSpec, candidate_matrix
from features.state import UserState

CATALOG = Catalog.from_data(
    [
        {"id": "a", "stage": "start", "effort": 1, "value": 1},
        {"id": "b", "stage": "deliver", "effort": 2, "value": 2.5},
        {"id": "c", "stage": "build", "effort": 4, "requires": ["a"]},
        {"id": "g", "stage": "convert", "effort": 8},
    ]
)

event = st.tuples(
    st.sampled_from(["u1", "u2", "u3"]),
    st.integers(0, 50).map(lambda x: 1_700_000_000 + x * 3600 // 7),
    st.sampled_from(["a", "b", "c"]),
    st.sampled_from(["accepted", "declined", "dropped"]),
    st.sampled_from(["email", "social", None, "brand-new"]),
    st.one_of(st.none(), st.floats(0, 100, allow_nan=False)),
)


def online_features(frame: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
    out = np.empty((len(frame), len(spec.names)))
    order = frame.sort_values(["user_id", "ts", "row"], kind="stable")
    states: dict[str, UserState] = {}
    for r in order.itertuples(index=False):
        st_ = states.setdefault(r.user_id, UserState())
        ctx = {"channel": r.channel, "score": r.score}
        pos = int(r.row) - 1
        out[pos] = candidate_matrix(spec, CATALOG, st_, [CATALOG.index[r.step]], r.ts, ctx)[0]
        st_.apply(CATALOG, CATALOG.index[r.step], r.outcome, r.ts, ctx)
    return out


@settings(max_examples=150, deadline=None)
@given(
    st.lists(event, min_size=1, max_size=40),
    st.lists(st.sampled_from(["email", "social"]), max_size=2),
)
def test_offline_equals_online_fold(events, seen) -> None:
    frame = pd.DataFrame(events, columns=["user_id", "ts", "step", "outcome", "channel", "score"])
    frame["ts"] = frame["ts"].astype(float)
    frame["score"] = frame["score"].astype(float)
    frame["row"] = np.arange(1, len(frame) + 1)
    # unknown values NaN or "other"; with and without the step_id column ("b" new to it)
    for pooled, step_ids in ((frozenset(), ()), (frozenset({"channel"}), ("c", "a", "g"))):
        spec = FeatureSpec(
            context_columns=("channel", "score"),
            categories={"channel": ("email", "social")},
            pooled=pooled,
            step_ids=step_ids,
        )
        off = build_offline_features(frame, CATALOG, spec)
        on = online_features(frame, spec)
        np.testing.assert_array_equal(off.X, on)


def test_features_never_see_the_future() -> None:
    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame(
        {
            "user_id": rng.choice(["x", "y", "z"], n),
            "ts": np.sort(rng.integers(0, 10_000, n)).astype(float),
            "step": rng.choice(["a", "b", "c"], n),
            "outcome": rng.choice(["accepted", "declined"], n),
            "channel": rng.choice(["email", "social"], n),
            "score": rng.random(n),
        }
    )
    frame["row"] = np.arange(1, n + 1)
    spec = FeatureSpec.from_frame(frame, ["channel", "score"])
    base = build_offline_features(frame, CATALOG, spec).X
    # change everything after row k: rows up to k keep their features
    k = 150
    changed = frame.copy()
    changed.loc[k:, "outcome"] = np.where(
        changed.loc[k:, "outcome"] == "accepted", "declined", "accepted"
    )
    changed.loc[k:, "channel"] = "social"
    X = build_offline_features(changed, CATALOG, spec).X
    np.testing.assert_array_equal(base[:k], X[:k])
