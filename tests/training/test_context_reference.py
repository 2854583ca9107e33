"""The training run's context reference (bundle meta) read back by the service's drift window:
the training contexts themselves score as stable, a shifted context scores as drift."""

from __future__ import annotations

import json

import numpy as np

from features.drift import META_KEY, DriftWindow, parse_reference, psi
from features.events import validate_frame
from tests.training.test_wide_context import wide_log
from training.pipeline import fit_and_evaluate


def _window(reference: dict, contexts: list[dict]) -> dict[str, float]:
    w = DriftWindow(parse_reference(reference), size=len(contexts))
    for c in contexts:
        w.observe(c)
    return w.scores()


def test_training_stores_a_reference_the_service_reads() -> None:
    frame, catalog = wide_log()
    log = validate_frame(frame, catalog, source="wide")
    out = fit_and_evaluate(log, catalog, params={"n_estimators": 10})
    ref = out.bundle.meta[META_KEY]
    assert len(json.dumps(ref)) < 8_000  # small enough for the meta
    cols = ref["columns"]
    assert set(out.spec.context_columns) == set(cols)
    assert cols["age"]["kind"] == "numeric" and cols["city"]["kind"] == "category"
    assert len(cols["city"]["values"]) == 20  # the top values; the rest share "other"
    for c in cols.values():
        assert abs(sum(c["shares"]) - 1.0) < 1e-4
    names = list(cols)
    rng = np.random.default_rng(0)
    rows = frame.iloc[rng.choice(len(frame), min(1500, len(frame)), replace=False)]
    same = [{k: _plain(r[k]) for k in names} for _, r in rows.iterrows()]
    stable = _window(ref, same)
    assert max(stable.values()) < 0.05, stable
    shifted = [{**c, "age": c["age"] + 40, "channel": "billboard"} for c in same]
    moved = _window(ref, shifted)
    assert moved["age"] > 0.25 and moved["channel"] > 0.25
    assert moved["city"] < 0.05  # untouched columns stay stable


def _plain(v: object) -> object:
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else v


def test_psi_is_zero_on_the_reference_and_grows_with_the_shift() -> None:
    expected = [0.25, 0.25, 0.5, 0.0]
    assert psi(expected, [25, 25, 50, 0]) < 1e-9
    small, big = psi(expected, [30, 25, 45, 0]), psi(expected, [60, 20, 20, 0])
    assert 0 < small < big
    assert psi(expected, [0, 0, 0, 0]) == 0.0


def test_an_unreadable_reference_means_no_drift_score() -> None:
    assert parse_reference(None) == ()
    assert (
        parse_reference({"columns": {"a": {"kind": "numeric", "edges": [1], "shares": [1]}}}) == ()
    )
    assert parse_reference({"columns": {"a": {"kind": "weird", "shares": []}}}) == ()
