"""Write a simulated event log into a real service store, as the service would have recorded it:
one decision per logged offer (its propensity, policy and context) and its outcome."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from sqlalchemy import insert

from features.catalog import load_catalog
from features.events import load_events
from service.store import Store
from service.tables import decisions, outcomes


def fill_store(
    url: str, events: Path, catalog: Path, *, prefix: str = "", shift: float = 0.0
) -> int:
    """Append ``events`` (validated against ``catalog``) to the store at ``url``; user and
    decision ids get ``prefix`` and every ts is moved by ``shift`` seconds. Returns the rows."""
    log = load_events(events, load_catalog(catalog))
    frame = log.frame
    ctx_cols = list(log.context_columns)
    dec_rows, out_rows = [], []
    for i, r in enumerate(frame.itertuples(index=False)):
        did = f"{prefix}d{i}"
        ts = float(r.ts) + shift
        ctx = {c: getattr(r, c) for c in ctx_cols if not pd.isna(getattr(r, c))}
        dec_rows.append(
            {
                "decision_id": did,
                "user_id": f"{prefix}{r.user_id}",
                "ts": ts,
                "created_at": ts,
                "step": r.step,
                "arm": "default",
                "policy": str(r.policy),
                "model_version": None,
                "propensity": float(r.propensity),
                "explored": False,
                "p_accept": None,
                "context": json.dumps(ctx),
                "candidates": None,
                "reason": None,
                "request_hash": None,
            }
        )
        out_rows.append(
            {
                "decision_id": did,
                "user_id": f"{prefix}{r.user_id}",
                "step": r.step,
                "outcome": r.outcome,
                "ts": ts,
                "created_at": ts,
                "context": None,
            }
        )
    store = Store(url)
    try:
        store.migrate()
        with store.write() as conn:
            conn.execute(insert(decisions), dec_rows)
            conn.execute(insert(outcomes), out_rows)
    finally:
        store.dispose()
    return len(dec_rows)
