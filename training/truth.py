"""The simulator's ground-truth columns: in its event logs for evaluation, never features.

A light module (no imports) so commands that only need to drop these columns, such as
``recommend``, do not import the training pipeline and its model libraries.
"""

from __future__ import annotations

from collections.abc import Iterable

TRUTH_COLUMN = "true_p_accept"  # the simulator's exact P(accept) of each offer
TRUTH_EXTRA = ("user_type",)  # the hidden type that produced it


def feature_context_columns(columns: Iterable[str]) -> list[str]:
    """The context columns of an event log that may feed the models: all of them, except in a
    simulator's log (one with ``TRUTH_COLUMN``), whose truth columns never do. One rule for
    training (both engines), ``recommend`` and ``compare``: a real log's ``user_type`` column is
    a feature wherever the model is used."""
    cols = list(columns)
    if TRUTH_COLUMN not in cols:
        return cols
    return [c for c in cols if c != TRUTH_COLUMN and c not in TRUTH_EXTRA]
