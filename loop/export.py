"""``nextstep export``: the service's decisions and outcomes as an event log (docs/design.md §4).

One row per acknowledged outcome (every row of the ``outcomes`` table):

* ``user_id``, ``ts`` (the outcome's ts), ``step``, ``outcome``;
* ``propensity``, ``policy`` and ``decision_id`` of the decision that made the offer (all null
  for an organic outcome, i.e. one reported without a ``decision_id``);
* the request context flattened into one column per key (``channel``, ``device``...): the
  decision's context for a decided offer, the outcome's own context for an organic one. Keys that
  would shadow a contract column (``user_id``, ``ts``, ``step``...) are dropped.

Missing outcomes (the "no response" rule). A decision that offered a step and has no outcome
is *pending* until ``wait_hours`` have passed, measured against the newest timestamp in the store
(decision or outcome ts, so the rule does not depend on the wall clock). Once past the window:

* ``ignore`` (default): it is left out, as if the offer had never been shown;
* ``declined``: it is written as a ``declined`` row at the decision's ts, with the decision's
  propensity, policy and context.

Pending decisions are always left out. A no-response row at or after the user's conversion is
left out too (the user converted through another offer; the contract forbids offers after it).
``--since`` keeps rows whose ts is at or after T.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.catalog import Catalog, load_catalog
from features.errors import NextstepError
from features.events import EventLog, validate_frame, write_events
from features.timeutil import parse_ts
from service.settings import Settings

NO_RESPONSE_RULES = ("ignore", "declined")
_RESERVED = {"user_id", "ts", "step", "outcome", "propensity", "policy", "decision_id", "row"}


class ExportError(NextstepError):
    """The store cannot be read or the options are invalid."""


@dataclass(frozen=True)
class ExportResult:
    log: EventLog
    outcomes: int  # rows from the outcomes table
    no_response: int  # decisions past the wait window written as declined
    pending: int  # decisions without an outcome still inside the window (or ignored)


def _settings() -> Any:
    return Settings()


def store_url(url: str | None = None) -> str:
    """The service's store URL: the given one, ``NEXTSTEP_DATABASE_URL`` or SQLite in HOME."""
    if url:
        return url
    return str(_settings().db_url)


def _parse_since(since: str | float | None) -> float | None:
    if since is None or since == "":
        return None
    try:
        return parse_ts(since)
    except ValueError as exc:
        raise ExportError(f"--since: {exc}") from None


def read_store(url: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(decisions, outcomes) tables as frames (read-only)."""
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        db = u.database
        if not db or not Path(db).exists():
            raise ExportError(f"no service store at {db!r}: has the service run?")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
            if not {"decisions", "outcomes"} <= names:
                raise ExportError(f"{u.render_as_string(hide_password=True)} is not a store")
            # outcomes first: a decision is stored before its outcome, so every outcome read
            # finds its decision even while the service keeps writing between the two reads
            out = pd.read_sql_table("outcomes", conn)
            dec = pd.read_sql_table("decisions", conn)
    finally:
        engine.dispose()
    return dec, out


def read_shadows(url: str) -> pd.DataFrame:
    """The ``shadow_decisions`` table (empty frame when the store predates shadow arms)."""
    from sqlalchemy import create_engine, inspect

    cols = ["decision_id", "arm", "policy", "model_version", "step", "propensity"]
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if "shadow_decisions" not in set(inspect(conn).get_table_names()):
                return pd.DataFrame(columns=cols)
            return pd.read_sql_table("shadow_decisions", conn)
    finally:
        engine.dispose()


def _context_frame(values: pd.Series) -> pd.DataFrame:
    rows = []
    for v in values:
        d = json.loads(v) if isinstance(v, str) and v else {}
        rows.append(
            {k: x for k, x in d.items() if k not in _RESERVED} if isinstance(d, dict) else {}
        )
    return pd.DataFrame(rows, index=values.index)


def build_log(
    decisions: pd.DataFrame,
    outcomes: pd.DataFrame,
    catalog: Catalog,
    *,
    since: float | None = None,
    wait_hours: float = 72.0,
    no_response: str = "ignore",
) -> ExportResult:
    """The event log of a store's tables (see the module docstring for the rules)."""
    if no_response not in NO_RESPONSE_RULES:
        raise ExportError(f"--no-response must be one of {', '.join(NO_RESPONSE_RULES)}")
    if not np.isfinite(wait_hours) or wait_hours < 0:
        raise ExportError("--wait-hours must be a finite number >= 0")
    dec = decisions.set_index("decision_id", drop=False)
    out = outcomes.copy()
    decided = out["decision_id"].notna()
    d = dec.reindex(out["decision_id"].where(decided))
    rows = pd.DataFrame(
        {
            "user_id": out["user_id"].astype(str).to_numpy(),
            "ts": out["ts"].astype(float).to_numpy(),
            "step": out["step"].astype(str).to_numpy(),
            "outcome": out["outcome"].astype(str).to_numpy(),
            "propensity": d["propensity"].astype(float).to_numpy(),
            "policy": d["policy"].where(decided.to_numpy(), None).to_numpy(dtype=object),
            "decision_id": out["decision_id"].where(decided, None).to_numpy(dtype=object),
            "_context": np.where(decided, d["context"].to_numpy(dtype=object), out["context"]),
        }
    )
    # decisions that offered a step and got no outcome
    answered = set(out["decision_id"].dropna())
    offered = dec[dec["step"].notna() & ~dec["decision_id"].isin(answered)]
    newest = max(
        float(dec["ts"].max()) if len(dec) else -np.inf,
        float(out["ts"].max()) if len(out) else -np.inf,
    )
    due = offered[offered["ts"] <= newest - wait_hours * 3600.0]
    n_no_response = 0
    if no_response == "declined" and len(due):
        goals = {s.id for s in catalog.goals}
        conv = out[(out["outcome"] == "accepted") & out["step"].isin(goals)]
        converted_at = conv.groupby("user_id")["ts"].min()
        limit = due["user_id"].map(converted_at).astype(float).fillna(np.inf)
        due = due[due["ts"] < limit]
        extra = pd.DataFrame(
            {
                "user_id": due["user_id"].astype(str).to_numpy(),
                "ts": due["ts"].astype(float).to_numpy(),
                "step": due["step"].astype(str).to_numpy(),
                "outcome": "declined",
                "propensity": due["propensity"].astype(float).to_numpy(),
                "policy": due["policy"].to_numpy(dtype=object),
                "decision_id": due["decision_id"].to_numpy(dtype=object),
                "_context": due["context"].to_numpy(dtype=object),
            }
        )
        n_no_response = len(extra)
        rows = pd.concat([rows, extra], ignore_index=True)
    pending = len(offered) - n_no_response
    if since is not None:
        rows = rows[rows["ts"] >= since]
    rows = rows.sort_values(["ts", "user_id"], kind="stable").reset_index(drop=True)
    ctx = _context_frame(rows.pop("_context"))
    frame = pd.concat([rows, ctx], axis=1)
    log = validate_frame(frame, catalog, source="service store")
    return ExportResult(log, len(out), n_no_response, int(pending))


def export_log(
    catalog: Catalog,
    *,
    since: str | float | None = None,
    url: str | None = None,
    wait_hours: float = 72.0,
    no_response: str = "ignore",
) -> ExportResult:
    decisions, outcomes = read_store(store_url(url))
    return build_log(
        decisions,
        outcomes,
        catalog,
        since=_parse_since(since),
        wait_hours=wait_hours,
        no_response=no_response,
    )


def served_catalog(url: str) -> Catalog | None:
    """The catalog the service last served from this store (None for a store that has not
    recorded one: no such store, or one written before migration 0003)."""
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() == "sqlite" and (not u.database or not Path(u.database).exists()):
        return None
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if "served_catalogs" not in set(inspect(conn).get_table_names()):
                return None
            row = conn.exec_driver_sql(
                "SELECT content, sha256 FROM served_catalogs ORDER BY last_served_at DESC LIMIT 1"
            ).first()
    finally:
        engine.dispose()
    if row is None:
        return None
    source = f"catalog served by the service (sha256 {str(row[1])[:12]})"
    return Catalog.from_data(json.loads(row[0]), source=source)


def resolve_catalog(catalog: Path | None, url: str | None = None) -> Catalog:
    """The catalog to validate the store's log with: ``--catalog`` when given, else the one the
    service last served (remembered in the store), else ``NEXTSTEP_CATALOG``."""
    if catalog is not None:
        return load_catalog(catalog)
    served = served_catalog(store_url(url))
    if served is not None:
        return served
    path = _settings().catalog
    if path is None:
        raise ExportError(
            "a catalog is needed to validate the export and the store has none recorded (has "
            "the service run on it?): pass --catalog or set NEXTSTEP_CATALOG"
        )
    return load_catalog(path)


def export_command(
    out: Path,
    since: str | None = None,
    *,
    catalog: Path | None = None,
    wait_hours: float = 72.0,
    no_response: str = "ignore",
) -> ExportResult:
    """CLI entry point (``nextstep export``)."""
    result = export_log(
        resolve_catalog(catalog), since=since, wait_hours=wait_hours, no_response=no_response
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    write_events(result.log, out)
    print(
        f"wrote {result.log.n_rows} rows to {out} ({result.outcomes} outcomes, "
        f"{result.no_response} no-response rows as declined, {result.pending} decisions without "
        "an outcome left out)"
    )
    return result
