"""Organic outcomes (an offer reported without a decision: no ``decision_id``, no propensity)
in off-policy evaluation of the service's log (``promote --evidence ope``): they are history,
folded into the user's state, and never evaluated as a decision of the logging policy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from evaluation.offpolicy import MissingPropensityError, build_policy, evaluate_log
from features.catalog import Catalog
from features.events import validate_frame
from simulation.compare import compare_log

CATALOG = Catalog.from_data(
    [
        {"id": "intro", "stage": "start", "effort": 1},
        {"id": "quiz", "stage": "guide", "effort": 2, "requires": ["intro"]},
        {"id": "buy", "stage": "convert", "effort": 5, "requires": ["quiz"]},
    ]
)
NAN = float("nan")


def _frame(rows: list[tuple[str, float, str, str, float, str | None]]) -> pd.DataFrame:
    df = pd.DataFrame(
        rows, columns=["user_id", "ts", "step", "outcome", "propensity", "decision_id"]
    )
    return validate_frame(df, CATALOG, source="service store").frame


# u1 accepted ``intro`` organically, then two decided offers that ``intro`` made possible.
LOG = [
    ("u1", 1.0, "intro", "accepted", NAN, None),
    ("u1", 2.0, "quiz", "accepted", 0.5, "d1"),
    ("u1", 3.0, "buy", "declined", 1.0, "d2"),
    ("u2", 1.0, "intro", "declined", 1.0, "d3"),
    ("u3", 5.0, "intro", "accepted", NAN, None),  # a user with only an organic outcome
]


def _ladder() -> dict[str, object]:
    return {"ladder": build_policy("ladder", CATALOG, None)[1]}


def test_organic_outcomes_are_folded_but_not_evaluated() -> None:
    dec = evaluate_log(_frame(LOG), CATALOG, _ladder(), missing_propensity="organic")
    assert dec.organic_rows == 2
    assert dec.n_rows == 3 and dec.user_ids == ["u1", "u2"]
    assert dec.user.tolist() == [0, 0, 1]
    assert np.array_equal(dec.propensity, [0.5, 1.0, 1.0])
    # the organic accept of intro is in u1's state: quiz is eligible and ladder offers it
    assert dec.logged_eligible.all()
    assert dec.target["ladder"].tolist() == [1.0, 1.0, 1.0]


def test_dropping_organic_rows_instead_would_lose_the_state_they_built() -> None:
    decided = [r for r in LOG if r[5] is not None]
    dec = evaluate_log(_frame(decided), CATALOG, _ladder())
    assert not dec.logged_eligible[0]  # quiz without intro: no policy could have offered it


def test_by_default_a_row_without_propensity_is_still_an_error() -> None:
    with pytest.raises(MissingPropensityError, match="no logged propensity"):
        evaluate_log(_frame(LOG), CATALOG, _ladder())


def test_a_decided_row_without_propensity_is_an_error_even_for_organic() -> None:
    bad = [*LOG, ("u2", 4.0, "intro", "accepted", NAN, "d9")]
    with pytest.raises(MissingPropensityError) as err:
        evaluate_log(_frame(bad), CATALOG, _ladder(), missing_propensity="organic")
    assert err.value.row == 6


def test_only_organic_outcomes_leave_nothing_to_evaluate() -> None:
    only = [r for r in LOG if r[5] is None]
    with pytest.raises(MissingPropensityError, match="every offer is an organic outcome"):
        evaluate_log(_frame(only), CATALOG, _ladder(), missing_propensity="organic")


def test_compare_log_reports_the_organic_rows() -> None:
    log = validate_frame(
        pd.DataFrame(
            LOG, columns=["user_id", "ts", "step", "outcome", "propensity", "decision_id"]
        ),
        CATALOG,
        source="service store",
    )
    comp = compare_log(log, CATALOG, ["ladder"], n_boot=20, missing_propensity="organic")
    assert comp.organic_rows == 2 and comp.rows == 3 and comp.users == 2
