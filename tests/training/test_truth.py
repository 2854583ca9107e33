"""The simulator's truth columns never become features; a real log's columns of the same names
do (``training.truth.feature_context_columns``: one rule for training, recommend and compare)."""

from __future__ import annotations

from training.truth import TRUTH_COLUMN, feature_context_columns


def test_a_simulated_log_loses_its_truth_columns() -> None:
    cols = ["channel", TRUTH_COLUMN, "user_type", "device"]
    assert feature_context_columns(cols) == ["channel", "device"]


def test_a_real_logs_user_type_is_a_feature() -> None:
    """Without the simulator's probability column, ``user_type`` is just a context column."""
    assert feature_context_columns(["user_type", "channel"]) == ["user_type", "channel"]
    assert feature_context_columns(iter(["a", "b"])) == ["a", "b"]  # any iterable
