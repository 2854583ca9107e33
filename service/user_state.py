"""Each user's folded state, stored as one row and kept current with every outcome.

Why: a decision needs the user's point-in-time state (``features.state.UserState``), and
folding it from the raw history on every request made one user's history an unbounded read on
the hot path (a user with a million outcomes took seconds and stalled the worker). The store
keeps the fold instead: ``fold_outcome`` applies each new outcome to the stored state in the
transaction that records it, so a decision reads one row and a batch one row per distinct user.
The raw outcomes stay in ``outcomes`` for export and ``GET /v1/users``.

The fold is ``UserState.apply`` through ``features.state.fold_history``, the function the
offline builder is proven equal to (``tests/features/test_parity.py``), so the stored state is
the one a full fold would give (``tests/service/test_user_state.py``). Two cases re-fold the
user's history instead of applying one event, both on the write path: an outcome older than
the newest one folded (the fold is in time order), and a state built for another catalog.
At start-up ``sync_states`` rebuilds every state once when the catalog changed (the fold reads
efforts, values and stages) or the states were never built (a store from before this table).

A state is JSON keyed by step id (never catalog position), with ``null`` for NaN times.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import operator
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from sqlalchemy import Connection

from features.catalog import Catalog
from features.state import UserState, fold_history, is_missing
from service.store import Store

log = logging.getLogger("nextstep.service.state")
STATE_FORMAT = 1
_META_KEY = "user_state_catalog"
_first = operator.itemgetter(0)


def catalog_fingerprint(catalog: Catalog) -> str:
    """A digest of everything the fold reads from the catalog (ids in order, stages, efforts,
    values, goals): equal fingerprints fold any history to equal states."""
    parts = [
        (s.id, s.stage_index, float(s.effort), float(s.value), bool(s.is_goal))
        for s in catalog.steps
    ]
    raw = orjson.dumps({"format": STATE_FORMAT, "steps": parts})
    return hashlib.sha256(raw).hexdigest()[:32]


def _t(x: float) -> float | None:
    return None if math.isnan(x) else x


def _f(x: float | None) -> float:
    return math.nan if x is None else float(x)


def encode(catalog: Catalog, state: UserState) -> str:
    """``state`` as the stored JSON (step positions become step ids)."""
    ids = catalog.ids
    accepted = [ids[i] for i in range(catalog.n) if (state.accepted_mask >> i) & 1]
    return orjson.dumps(
        {
            "accepted": accepted,
            "n_asks": state.n_asks,
            "n_accepts": state.n_accepts,
            "n_declines": state.n_declines,
            "cons_accepts": state.cons_accepts,
            "cons_declines": state.cons_declines,
            "max_effort": state.max_effort,
            "value_received": state.value_received,
            "stage_reached": state.stage_reached,
            "first_ts": _t(state.first_ts),
            "last_ts": _t(state.last_ts),
            "prev_ts": _t(state.prev_ts),
            "step_offers": {ids[i]: n for i, n in state.step_offers.items()},
            "step_declines": {ids[i]: n for i, n in state.step_declines.items()},
            "context": state.context,
            "last_outcome": state.last_outcome,
            "step_last_ts": {ids[i]: t for i, t in state.step_last_ts.items()},
            "ask_times": state.ask_times,
        }
    ).decode()


def decode(catalog: Catalog, text: str | bytes) -> UserState:
    """The ``UserState`` a stored JSON describes (for the catalog it was built with)."""
    d = orjson.loads(text)
    index = catalog.index
    mask = 0
    for step in d["accepted"]:
        mask |= 1 << index[step]
    return UserState(
        mask,
        d["n_asks"],
        d["n_accepts"],
        d["n_declines"],
        d["cons_accepts"],
        d["cons_declines"],
        float(d["max_effort"]),
        float(d["value_received"]),
        d["stage_reached"],
        _f(d["first_ts"]),
        _f(d["last_ts"]),
        _f(d["prev_ts"]),
        {index[k]: n for k, n in d["step_offers"].items()},
        {index[k]: n for k, n in d["step_declines"].items()},
        d["context"],
        d["last_outcome"],
        {index[k]: float(t) for k, t in d["step_last_ts"].items()},
        [float(t) for t in d["ask_times"]],
    )


def fold_rows(catalog: Catalog, rows: Iterable[tuple[str, str, float, Any]]) -> UserState:
    """The state after ``(step, outcome, ts, context)`` rows oldest first (the offline fold)."""
    return fold_history(catalog, rows)


def apply_event(
    catalog: Catalog, state: UserState, step: str, outcome: str, ts: float, context: Any
) -> None:
    """One more event, exactly as ``fold_history`` treats it (a step the catalog no longer has
    only contributes its context)."""
    i = catalog.index.get(step)
    if i is None:
        if context:
            state.context.update({k: v for k, v in context.items() if not is_missing(v)})
        return
    state.apply(catalog, i, outcome, ts, context)


# -- reads (the hot path) ------------------------------------------------------------------------
def read_state(store: Store, catalog: Catalog, user_id: str) -> UserState | None:
    """The user's stored state; None for a user nothing was recorded for (a new user)."""
    row = store.read_state_row(user_id)
    return None if row is None else _usable(store, catalog, user_id, row)


def read_states(
    store: Store, catalog: Catalog, user_ids: Iterable[str]
) -> dict[str, UserState | None]:
    """``read_state`` for many users: one row per distinct user (a batch's one read)."""
    rows = store.read_state_rows(list(dict.fromkeys(user_ids)))  # each distinct user once
    return {
        uid: None if row is None else _usable(store, catalog, uid, row) for uid, row in rows.items()
    }


def _usable(store: Store, catalog: Catalog, user_id: str, row: tuple[str, str]) -> UserState:
    fingerprint, text = row
    if fingerprint == catalog_fingerprint_cached(catalog):
        return decode(catalog, text)
    # built for another catalog (another worker mid-deploy): fold this user's history now
    log.warning("user state built for another catalog: folding the history of one user")
    return fold_rows(catalog, (e.row() for e in store.history(user_id)))


def catalog_fingerprint_cached(catalog: Catalog) -> str:
    """``catalog_fingerprint``, computed once per catalog object (catalogs are immutable), and
    kept on it: every decision compares it with the stored row's."""
    found = getattr(catalog, "_state_fingerprint", None)
    if found is None:
        found = catalog_fingerprint(catalog)
        catalog._state_fingerprint = found  # type: ignore[attr-defined]
    return found


# -- writes ---------------------------------------------------------------------------------------
def state_in_transaction(
    store: Store, conn: Connection, catalog: Catalog, user_id: str
) -> tuple[UserState, bool, float]:
    """The user's state inside a write transaction (the caller holds the user's lock):
    ``(state, stored, newest folded ts)``; re-folded from the history when it was built for
    another catalog."""
    row = store.get_state(conn, user_id)
    if row is None:
        return UserState(), False, -math.inf
    fingerprint, text, last_ts = row
    if fingerprint == catalog_fingerprint_cached(catalog):
        return decode(catalog, text), True, last_ts
    history = store.history(user_id, conn)
    state = fold_rows(catalog, (e.row() for e in history))
    return state, True, history[-1].ts if history else -math.inf


def fold_outcome(
    store: Store,
    conn: Connection,
    catalog: Catalog,
    user_id: str,
    current: tuple[UserState, bool, float],
    event: tuple[str, str, float, Mapping[str, Any] | None],
) -> None:
    """Store the user's state with ``event`` (just inserted into ``outcomes`` on ``conn``)
    folded in: applied to ``current`` when it is the newest, else the history re-folded."""
    state, stored, last_ts = current
    step, outcome, ts, context = event
    if ts >= last_ts:
        apply_event(catalog, state, step, outcome, ts, context)
        newest = ts
    else:  # an outcome older than one already folded: the fold is in time order
        history = store.history(user_id, conn)
        state = fold_rows(catalog, (e.row() for e in history))
        newest = history[-1].ts
    store.put_state(
        conn,
        user_id,
        catalog_fingerprint_cached(catalog),
        encode(catalog, state),
        newest,
        exists=stored,
    )


def sync_states(store: Store, catalog: Catalog) -> int:
    """Rebuild every user's state when the stored ones were built for another catalog, or
    never (a store from before states were kept); returns how many users were rebuilt (0:
    the states were current). Start-up only: several workers starting together rebuild once
    (the second finds the fingerprint current). Outcomes written into the table by anything
    but the service are folded only by a rebuild: delete the ``store_meta`` row
    ``user_state_catalog`` and restart."""
    fingerprint = catalog_fingerprint_cached(catalog)
    with store.write() as conn:
        store.lock_migrations(conn)
        if store.get_meta(conn, _META_KEY) == fingerprint:
            return 0
        store.delete_states(conn)
        n = 0
        batch: list[dict[str, Any]] = []
        # one pass over every outcome in (user, ts, id) order, folded as it streams by: never
        # one user's whole history in memory
        for user_id, events in itertools.groupby(store.iter_all_events(conn), key=_first):
            state = UserState()
            last_ts = -math.inf
            for _uid, step, outcome, ts, context in events:
                apply_event(catalog, state, step, outcome, ts, context)
                last_ts = ts
            batch.append(store.state_row(user_id, fingerprint, encode(catalog, state), last_ts))
            n += 1
            if len(batch) >= 500:
                store.insert_states(conn, batch)
                batch = []
        store.insert_states(conn, batch)
        store.put_meta(conn, _META_KEY, fingerprint)
    if n:
        log.info("rebuilt the stored state of %d users for this catalog", n)
    return n
