"""Wide context: every column is kept and its treatment is said (``FeatureSpec.from_frame``).

A 500-value column is the case that used to vanish without a word: now its most frequent values
keep their own category and the rest share "other", in training and at serving time alike.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from features.catalog import Catalog
from features.offline import build_offline_features
from features.spec import (
    MAX_CATEGORIES,
    FeatureSpec,
    candidate_matrix,
    context_facts,
    merge_facts,
)
from features.state import UserState

CATALOG = Catalog.from_data(
    [
        {"id": "a", "stage": "start", "effort": 1},
        {"id": "g", "stage": "convert", "effort": 5},
    ]
)


def wide_frame(n: int = 6000, seed: int = 0) -> pd.DataFrame:
    """A ``city`` column with 500 values (Zipf-like frequencies), a 3-value ``plan``, a numeric
    ``score``, a numeric column given as text, and a column that is always missing."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, 501)
    city = rng.choice([f"city{i:03d}" for i in range(500)], n, p=weights / weights.sum())
    city[:500] = [f"city{i:03d}" for i in range(500)]  # every value occurs at least once
    return pd.DataFrame(
        {
            "user_id": [f"u{i % 400}" for i in range(n)],
            "ts": 1_700_000_000.0 + np.arange(n),
            "step": "a",
            "outcome": rng.choice(["accepted", "declined"], n),
            "city": city,
            "plan": rng.choice(["free", "pro", "team"], n),
            "score": rng.random(n),
            "empty": pd.Series([None] * n, dtype=object),
            "row": np.arange(1, n + 1),
        }
    )


@pytest.fixture(scope="module")
def wide() -> tuple[pd.DataFrame, FeatureSpec]:
    frame = wide_frame()
    return frame, FeatureSpec.from_frame(frame, ["city", "plan", "score", "empty"])


def test_a_500_value_column_is_kept_with_its_top_values_and_other(wide):
    frame, spec = wide
    assert spec.context_columns == ("city", "plan", "score")
    cats = spec.categories["city"]
    assert len(cats) == MAX_CATEGORIES - 1 and spec.pooled == {"city"}
    counts = frame["city"].value_counts()
    # the kept values are the most frequent ones
    assert counts[list(cats)].min() >= counts.drop(list(cats)).max()
    assert spec.other_code("city") == len(cats) and spec.other_code("plan") is None
    assert spec.categories["plan"] == ("free", "pro", "team")
    assert "score" not in spec.categories
    # every context feature is categorical for LightGBM except the number
    names = spec.names
    assert [names[i] for i in spec.categorical_indices] == ["ctx_city", "ctx_plan"]


def test_each_column_treatment_is_reported(wide):
    _, spec = wide
    notes = spec.describe()
    assert set(notes) == {"city", "plan", "score", "empty"}
    assert notes["city"].startswith("categorical, 500 values: the 63 most frequent kept (")
    assert notes["city"].endswith("the other 437 pooled as 'other'")
    share = float(notes["city"].split("(")[1].split("%")[0])
    assert 50 < share < 100
    assert notes["plan"] == "categorical, 3 values"
    assert notes["score"] == "numeric"
    assert notes["empty"] == "left out: no value in the training log"


def test_rare_and_new_values_share_other_online_and_offline(wide):
    frame, spec = wide
    cats = spec.categories["city"]
    rare = sorted(set(frame["city"]) - set(cats))[0]
    col = spec.context_columns.index("city")
    enc = spec.encode_context
    assert enc({"city": cats[3]})[col] == 3.0
    assert enc({"city": rare})[col] == enc({"city": "never-seen"})[col] == len(cats)
    assert math.isnan(enc({})[col])  # missing stays missing
    assert math.isnan(enc({"plan": "enterprise"})[spec.context_columns.index("plan")])
    X = build_offline_features(frame, CATALOG, spec).X
    base = len(spec.names) - len(spec.context_columns)
    is_rare = ~frame["city"].isin(cats).to_numpy()
    assert (X[is_rare, base + col] == len(cats)).all()
    online = candidate_matrix(spec, CATALOG, UserState(), [0], 0.0, {"city": rare, "score": 0.5})
    assert online[0, base + col] == len(cats)


def test_spec_round_trips_through_its_dict(wide):
    _, spec = wide
    back = FeatureSpec.from_dict(spec.to_dict())
    assert back == spec
    old = FeatureSpec.from_dict({"context_columns": ["plan"], "categories": {"plan": ["free"]}})
    assert old.pooled == frozenset() and old.describe() == {"plan": "categorical, 1 value"}


def test_narrow_columns_are_unchanged():
    """At most MAX_CATEGORIES values: every value its own category, unknown values missing."""
    frame = wide_frame(n=800)
    frame["city"] = [f"c{i % MAX_CATEGORIES}" for i in range(len(frame))]
    spec = FeatureSpec.from_frame(frame, ["city"])
    assert len(spec.categories["city"]) == MAX_CATEGORIES and spec.pooled == frozenset()
    assert math.isnan(spec.encode_context({"city": "new"})[0])


def test_step_id_feature_is_coded_by_id_and_new_steps_are_missing(wide):
    frame, spec = wide
    with_id = FeatureSpec.from_dict({**spec.to_dict(), "step_ids": ["g", "a"]})
    assert with_id.names == [*spec.names, "step_id"]
    assert with_id.categorical_indices == [*spec.categorical_indices, len(spec.names)]
    X = build_offline_features(frame, CATALOG, with_id).X
    assert (X[:, -1] == 1.0).all()  # every row offers "a", the second trained step
    np.testing.assert_array_equal(X[:, :-1], build_offline_features(frame, CATALOG, spec).X)
    # a catalog in another order, with a step the model never saw: codes follow the ids
    other = Catalog.from_data(
        [
            {"id": "new", "stage": "start", "effort": 1},
            {"id": "g", "stage": "convert", "effort": 5},
            {"id": "a", "stage": "start", "effort": 1},
        ]
    )
    codes = with_id.step_codes(other)
    assert math.isnan(codes[0]) and codes[1:].tolist() == [0.0, 1.0]
    rows = candidate_matrix(with_id, other, UserState(), [0, 1, 2], 0.0, {})
    assert math.isnan(rows[0, -1]) and rows[1:, -1].tolist() == [0.0, 1.0]


def test_facts_of_parts_add_up_to_the_whole_log(wide):
    """The Dask engine learns the layout from per-partition facts (``context_facts`` of each
    part, ``merge_facts``): any split of the rows gives the single-machine spec."""
    frame, spec = wide
    cols = ["city", "plan", "score", "empty"]
    # uneven parts, one empty, one where ``score`` has no value at all
    blank = frame.iloc[100:900].assign(score=np.nan)
    parts = [frame.iloc[:100], frame.iloc[0:0], blank, frame.iloc[900:]]
    merged = FeatureSpec.from_counts(cols, *merge_facts([context_facts(p, cols) for p in parts]))
    assert merged == spec
    numeric, counts = merge_facts([context_facts(p, cols) for p in parts])
    assert numeric == {"score"} and counts["empty"] == {}
    assert sum(counts["city"].values()) == len(frame)
    # a numeric column with no value in any part is left out, as on one machine
    none = [p.assign(score=np.nan) for p in parts]
    assert (
        "score"
        not in FeatureSpec.from_counts(
            cols, *merge_facts([context_facts(p, cols) for p in none])
        ).context_columns
    )
