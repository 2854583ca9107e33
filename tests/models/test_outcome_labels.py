"""The outcome models learn what the planner needs: a decline loses the user when they drop
*or* never come back (end of their visits), not only on an explicit "dropped"."""

from __future__ import annotations

import numpy as np
import pandas as pd

from simulation.synthetic import bundle_from_frame
from simulation.worlds import load_world

CAT = load_world("ladder").catalog


def _frame() -> pd.DataFrame:
    rows = []
    t0 = 1.7e9
    for i in range(90):
        kind = i % 3
        u = f"u{i}"
        if kind == 0:  # declines the last offer of their visits: gone without a word
            rows += [(u, t0, "read_intro", "accepted"), (u, t0 + 60, "purchase", "declined")]
        elif kind == 1:  # declines, comes back and accepts: not gone
            rows += [(u, t0, "purchase", "declined"), (u, t0 + 60, "read_intro", "accepted")]
        else:  # says stop
            rows += [(u, t0, "watch_clip", "dropped")]
    frame = pd.DataFrame(rows, columns=["user_id", "ts", "step", "outcome"])
    frame["channel"] = np.where(frame.index % 2 == 0, "email", "search")
    frame["row"] = np.arange(1, len(frame) + 1)
    return frame


def test_the_drop_model_counts_a_decline_with_no_later_visit_as_gone() -> None:
    bundle = bundle_from_frame(_frame(), CAT, ["channel"], params={"n_estimators": 5})
    # 90 declined-or-dropped offers: 30 final declines and 30 drops are gone, 30 came back
    assert bundle.base_rates["drop"] == 60 / 90
    # back: accepted non-goal offers followed by a later event (only kind 0's first offer)
    assert bundle.base_rates["back"] == 30 / 60
