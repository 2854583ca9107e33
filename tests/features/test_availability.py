"""``available_when`` in the catalog and in the event log (docs/design.md sections 3 and 4)."""

from __future__ import annotations

import pandas as pd
import pytest

from features.availability import value_key
from features.catalog import Catalog
from features.errors import CatalogError, EventLogError
from features.events import validate_frame

STEPS = [
    {"id": "intro", "stage": "start", "effort": 1},
    {"id": "team", "stage": "build", "effort": 3, "available_when": {"plan": ["team"]}},
    {
        "id": "report",
        "stage": "deliver",
        "effort": 2,
        "available_when": {"plan": ["pro", "team"], "country": {"not": ["de", "at"]}},
    },
    {"id": "tier", "stage": "guide", "effort": 2, "available_when": {"tier": 2}},
    {"id": "buy", "stage": "convert", "effort": 8},
]
CAT = Catalog.from_data(STEPS)


def eligible(context: dict) -> set[str]:
    return {CAT.ids[i] for i in CAT.eligible_indices(0, CAT.available(context))}


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        ({"plan": "team"}, {"intro", "team", "report", "buy"}),
        ({"plan": "pro", "country": "fr"}, {"intro", "report", "buy"}),
        ({"plan": "pro", "country": "at"}, {"intro", "buy"}),
        ({"plan": "free"}, {"intro", "buy"}),
        ({}, {"intro", "buy"}),  # unknown plan: a list rule is not met
        ({"plan": None, "country": float("nan")}, {"intro", "buy"}),
        ({"tier": 2.0}, {"intro", "tier", "buy"}),  # numbers compare by value
        ({"tier": "2"}, {"intro", "tier", "buy"}),
        ({"tier": 3}, {"intro", "buy"}),
    ],
)
def test_rules_decide_which_steps_exist(context, expected):
    assert eligible(context) == expected


def test_rules_combine_with_requires_and_conversion():
    cat = Catalog.from_data(
        [
            {"id": "a", "stage": "start", "effort": 1},
            {"id": "b", "stage": "build", "effort": 2, "requires": ["a"]},
            {"id": "g", "stage": "convert", "effort": 3, "available_when": {"seg": ["x"]}},
        ]
    )
    assert cat.eligible_indices(0, cat.available({"seg": "x"})) == [0, 2]
    assert cat.eligible_indices(1, cat.available({"seg": "y"})) == [1]
    assert cat.eligible_indices(0b101, cat.available({"seg": "x"})) == []  # converted
    assert cat.eligible_indices(0) == [0, 2]  # no mask given: every step exists
    assert not Catalog.from_data(STEPS[:1] + STEPS[-1:]).has_availability


def test_the_rules_are_kept_when_the_catalog_is_written_back():
    again = Catalog.from_data(CAT.to_list())
    assert again == CAT and again.rules == CAT.rules
    assert CAT.to_list()[1]["available_when"] == {"plan": ["team"]}


def test_value_keys():
    assert value_key(1) == value_key(1.0) == value_key("1") == value_key(" 1.0 ") == "1"
    assert value_key("pro") == "pro" and value_key(True) == "true" and value_key(2.5) == "2.5"


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ([["plan", "pro"]], "must be a mapping"),
        ({}, "must be a mapping"),
        ({"plan": []}, "needs one or more plain values"),
        ({"plan": None}, "needs one or more plain values"),
        ({"plan": [{"a": 1}]}, "needs one or more plain values"),
        ({"plan": {"only": ["pro"]}}, r"must be a list of values, \{in: \[\.\.\]\} or"),
        ({"plan": {"not": ["a"], "in": ["b"]}}, "got keys"),
        ({"": ["pro"]}, "keys must be context column names"),
    ],
)
def test_bad_rules_are_refused_naming_step_and_field(rule, message):
    steps = [dict(s) for s in STEPS]
    steps[1]["available_when"] = rule
    with pytest.raises(CatalogError, match=message) as err:
        Catalog.from_data(steps, source="c.yaml")
    assert (err.value.step, err.value.field) == ("team", "available_when")
    assert str(err.value).startswith("c.yaml, step 'team', field 'available_when': ")


def log(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(
        rows, columns=["user_id", "ts", "step", "outcome", "plan", "country"]
    ).astype({"ts": float})


def test_an_offer_the_rules_exclude_is_an_error_naming_row_and_column():
    frame = log(
        [
            ("u1", 1, "intro", "accepted", "free", "fr"),
            ("u1", 2, "report", "declined", "pro", "fr"),
            ("u2", 3, "report", "declined", "pro", "de"),  # row 3: country excluded
            ("u2", 4, "team", "declined", "pro", "de"),
        ]
    )
    with pytest.raises(EventLogError) as err:
        validate_frame(frame, CAT, source="log.csv")
    assert (err.value.row, err.value.column) == (3, "country")
    assert str(err.value) == (
        "log.csv, row 3, column 'country': step 'report' is not available when country is "
        "'de' (its available_when: country not in [at, de])"
    )
    ok = validate_frame(frame, CAT, source="log.csv", skip_invalid=True)
    assert ok.skipped == {"unavailable_step": 2}
    assert ok.frame["row"].tolist() == [1, 2]


def test_rows_without_the_value_or_logs_without_the_column_are_not_judged():
    frame = log(
        [("u1", 1, "report", "declined", None, None), ("u1", 2, "team", "declined", "", "")]
    )
    assert len(validate_frame(frame, CAT, source="x").frame) == 2
    bare = frame.drop(columns=["plan", "country"])
    assert len(validate_frame(bare, CAT, source="x").frame) == 2
