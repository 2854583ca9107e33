"""The decision and outcome store: SQLAlchemy Core, one code path for SQLite and PostgreSQL.

Why Core and short explicit transactions: every acknowledged write must be durable before the
response leaves (docs/design.md section 6: a 2xx survives ``kill -9``), and the few invariants that
matter under concurrency (one outcome per decision, one effect per idempotency key) are enforced
by unique constraints, not by application locks. On SQLite, write transactions start with
``BEGIN IMMEDIATE`` (the pysqlite driver's own transaction handling is switched off) so two
writers never deadlock on a lock upgrade, and the journal is WAL with ``synchronous`` NORMAL
(the service's default, ``NEXTSTEP_SQLITE_SYNCHRONOUS``: a committed write is in the OS before
the response, which survives a ``kill -9``) or FULL (also a power cut; the default of a
``Store`` built directly, as the CLI's commands build it).

Driver failures (server down, disk full, read-only file, pool exhausted) surface as
``StoreUnavailable`` so the API answers 503 with ``Retry-After`` instead of 500; integrity
violations are left to the caller, which knows what they mean.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import operator
import threading
import time
import weakref
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from features.errors import NextstepError
from service.group_commit import GroupCommitter, LoopGroupCommitter, Rows
from service.tables import (
    decisions,
    idempotency,
    metadata,
    outcomes,
    served_catalogs,
    shadow_decisions,
    store_meta,
    user_state,
)

log = logging.getLogger("nextstep.service.store")
_MIGRATION_LOCK = 0x6E657874  # "next": serialises start-up migrations of several workers
_CHUNK = 500


# Statements are built once: constructing a Core statement costs more than running it on SQLite.
_o, _d, _i = outcomes.c, decisions.c, idempotency.c
_HISTORY_COLUMNS = (_o.user_id, _o.decision_id, _o.step, _o.outcome, _o.ts, _o.context, _d.context)
_HISTORY_FROM = outcomes.outerjoin(decisions, _o.decision_id == _d.decision_id)
_HISTORY_ONE = (
    select(*_HISTORY_COLUMNS)
    .select_from(_HISTORY_FROM)
    .where(_o.user_id == bindparam("uid"))
    .order_by(_o.ts, _o.id)
)
_HISTORY_MANY = (
    select(*_HISTORY_COLUMNS)
    .select_from(_HISTORY_FROM)
    .where(_o.user_id.in_(bindparam("uids", expanding=True)))
    .order_by(_o.user_id, _o.ts, _o.id)
)
_INSERT_DECISION = insert(decisions)
_INSERT_OUTCOME = insert(outcomes)
_INSERT_IDEMPOTENT = insert(idempotency)
_GET_DECISION = select(decisions).where(_d.decision_id == bindparam("did"))
_OUTCOME_OF = select(outcomes).where(_o.decision_id == bindparam("did"))
_HAS_CONVERTED = (
    select(_o.id)
    .where(
        _o.user_id == bindparam("uid"),
        _o.outcome == "accepted",
        _o.step.in_(bindparam("goals", expanding=True)),
    )
    .limit(1)
)
_IDEMPOTENT_GET = select(_i.request_hash, _i.status, _i.body).where(
    _i.key == bindparam("key"), _i.route == bindparam("route")
)
_s, _m = user_state.c, store_meta.c
_STATE_ONE = select(_s.catalog, _s.state).where(_s.user_id == bindparam("uid"))
_STATE_MANY = select(_s.user_id, _s.catalog, _s.state).where(
    _s.user_id.in_(bindparam("uids", expanding=True))
)
_STATE_FOR_WRITE = select(_s.catalog, _s.state, _s.last_ts).where(_s.user_id == bindparam("uid"))
_ALL_EVENTS = (
    select(*_HISTORY_COLUMNS).select_from(_HISTORY_FROM).order_by(_o.user_id, _o.ts, _o.id)
)
_PAGE_COLUMNS = (_o.id, *_HISTORY_COLUMNS)


class StoreUnavailable(NextstepError):
    """The database cannot be used right now (down, full, read-only, overloaded)."""


class HistoryEvent(NamedTuple):
    """One outcome in a user's history, oldest first; ``context`` from the decision if any."""

    decision_id: str | None
    step: str
    outcome: str
    ts: float
    context: dict[str, Any] | None

    def row(self) -> tuple[str, str, float, dict[str, Any] | None]:
        """The ``(step, outcome, ts, context)`` shape ``models.decide.Decider`` folds."""
        return (self.step, self.outcome, self.ts, self.context)


# Stored idempotency bodies are bounded: a body from this size on is stored zlib-compressed
# (a 1,000-decision batch's ~620 KB response is a tenth of that), and one that is still larger
# than IDEMPOTENT_MAX_STORED compressed is not kept at all (``body`` empty): its retry gets 409
# instead of a replay. JSON bodies start with "{", zlib streams with "x": the two never clash.
IDEMPOTENT_COMPRESS_FROM = 4096
IDEMPOTENT_MAX_STORED = 256 * 1024


@dataclass(frozen=True)
class IdempotentRecord:
    request_hash: str
    status: int
    body: bytes  # empty: the response was too large to keep (see IDEMPOTENT_MAX_STORED)

    @classmethod
    def from_row(cls, row: Sequence[Any] | None) -> IdempotentRecord | None:
        """A ``_IDEMPOTENT_GET`` row as a record (None: the key is not stored)."""
        if row is None:
            return None
        body = bytes(row[2])
        if body[:1] == b"x":
            body = zlib.decompress(body)
        return cls(row[0], int(row[1]), body)


def stored_body(body: bytes) -> bytes:
    """What the ``idempotency`` table keeps of a response (see IDEMPOTENT_MAX_STORED)."""
    if len(body) < IDEMPOTENT_COMPRESS_FROM:
        return body
    packed = zlib.compress(body, 6)
    return packed if len(packed) <= IDEMPOTENT_MAX_STORED else b""


def idempotency_row(
    key: str, route: str, request_hash: str, status: int, body: bytes
) -> dict[str, Any]:
    """The ``idempotency`` table row that remembers a keyed request's response."""
    return {
        "key": key,
        "route": route,
        "request_hash": request_hash,
        "status": status,
        "body": stored_body(body),
        "created_at": time.time(),
    }


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _loads(value: str | None) -> Any:
    return None if value is None else orjson.loads(value)


class Store:
    """Short-lived connections from a pool; ``read()``/``write()`` give a transaction each."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 8,
        max_overflow: int = 24,
        sqlite_synchronous: str = "FULL",
        sqlite_mmap_mib: int = 0,
    ) -> None:
        self.url = url
        # SQLite pragmas applied to every new connection; ``wal_autocheckpoint`` drops to 0
        # once the background checkpointer runs (see ``_start_checkpointer``).
        self._pragmas: dict[str, str | int] = {
            "synchronous": sqlite_synchronous,
            "mmap_size": int(sqlite_mmap_mib) << 20,
        }
        self.engine: Engine = _make_engine(
            url, pool_size=pool_size, max_overflow=max_overflow, pragmas=self._pragmas
        )
        self.dialect = self.engine.dialect.name
        # what ``_translate`` catches, looked up once: the raw-cursor paths raise driver errors
        dbapi = self.engine.dialect.loaded_dbapi
        self._driver_integrity: type[Exception] = getattr(dbapi, "IntegrityError", IntegrityError)
        self._driver_error: type[Exception] = getattr(dbapi, "Error", DBAPIError)
        # what a unique-key clash raises, from a Core connection or a raw cursor
        self.integrity_errors: tuple[type[Exception], ...] = (
            IntegrityError,
            self._driver_integrity,
        )
        self.embedded = self.dialect == "sqlite"  # local file: calls are short, no network
        # SQLite has one writer at a time anyway; queueing this process's writers on a lock
        # (instead of SQLite's sleep-and-retry busy handler) keeps the latency tail short.
        self._write_lock: threading.Lock | None = (
            threading.Lock() if self.dialect == "sqlite" else None
        )
        # SQLite's hot statements run on one connection per thread (``_ThreadConnections``)
        self._hot = _ThreadConnections(self.engine) if self.embedded else None
        # The hot path's history read, compiled once for this dialect and run on a pooled
        # DBAPI cursor: SQLAlchemy's per-execution machinery cost five times the query itself.
        self._history_sql = _raw_sql(_HISTORY_ONE, self.engine.dialect)
        self._key_sql = _raw_sql(_IDEMPOTENT_GET, self.engine.dialect)
        self._state_sql = _raw_sql(_STATE_ONE, self.engine.dialect)
        self._states_compiled = _STATE_MANY.compile(dialect=self.engine.dialect)
        self._expanded_cache: dict[tuple[int, int], tuple[str, list[str] | None]] = {}
        self._committer: GroupCommitter | LoopGroupCommitter | None = None
        self._committer_lock = threading.Lock()
        self._checkpointer: _Checkpointer | None = None
        self._insert_cache: dict[tuple[str, tuple[str, ...]], tuple[str, tuple[str, ...]]] = {}

    # -- transactions ------------------------------------------------------------------------
    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction: one snapshot on SQLite; on PostgreSQL (read committed) each
        statement sees its own."""
        with self._translate(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction, committed when the block exits without an exception."""
        with (
            self._writer(),
            self._translate(),
            self.engine.connect().execution_options(nextstep_write=True) as conn,
            conn.begin(),
        ):
            yield conn

    @contextmanager
    def _writer(self) -> Iterator[None]:
        if self._write_lock is None:
            yield
            return
        if self._checkpointer is None:  # the first write of this store: see _start_checkpointer
            self._start_checkpointer()
        if not self._write_lock.acquire(timeout=10.0):
            raise StoreUnavailable("store busy: timed out waiting to write")
        try:
            yield
        finally:
            self._write_lock.release()

    @contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except (IntegrityError, self._driver_integrity):
            raise
        except (DBAPIError, PoolTimeout, self._driver_error) as exc:
            orig = getattr(exc, "orig", None) or exc
            log.warning("store unavailable: %s: %s", type(orig).__name__, str(orig)[:300])
            raise StoreUnavailable(f"store unavailable ({type(orig).__name__})") from exc

    def dispose(self) -> None:
        if self._committer is not None:
            self._committer.close()
            self._committer = None
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._hot is not None:
            self._hot.close_all()
        self.engine.dispose()

    # -- schema ----------------------------------------------------------------------------
    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (several workers may race here)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self.write() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def create_all(self) -> None:
        """Create the tables without Alembic (tests of the schema itself only)."""
        with self.write() as conn:
            metadata.create_all(conn)

    def ping(self) -> None:
        with self.read() as conn:
            conn.execute(text("SELECT 1"))

    # -- history -----------------------------------------------------------------------------
    def history(self, user_id: str, conn: Connection | None = None) -> list[HistoryEvent]:
        """One user's outcomes ordered by (ts, id): in the transaction ``conn``, or, without
        one, on the hot cursor (this thread's own SQLite connection, a pooled one on a server).

        One SELECT is its own consistent snapshot on both back ends, so the read without a
        transaction needs no BEGIN/COMMIT (tests prove both reads equal)."""
        if conn is not None:
            return self.histories(conn, [user_id]).get(user_id, [])
        sql, order = self._history_sql
        with self._translate(), self._hot_cursor() as (_raw, cur):
            cur.execute(sql, _bind(order, {"uid": user_id}))
            rows = cur.fetchall()
        return [_history_event(row) for row in rows]

    def histories(self, conn: Connection, user_ids: Iterable[str]) -> dict[str, list[HistoryEvent]]:
        """Each user's outcomes ordered by (ts, id): one indexed query per chunk of users."""
        wanted = list(dict.fromkeys(user_ids))
        out: dict[str, list[HistoryEvent]] = {u: [] for u in wanted}
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            if len(chunk) == 1:
                rows = conn.execute(_HISTORY_ONE, {"uid": chunk[0]})
            else:
                rows = conn.execute(_HISTORY_MANY, {"uids": chunk})
            for row in rows:
                out[row[0]].append(_history_event(row))
        return out

    def _expanded(self, compiled: Any, n: int) -> tuple[str, list[str] | None]:
        """An ``IN``-list statement for ``n`` values as this dialect's SQL (and its parameter
        names, None when positional), expanded once per (statement, length)."""
        key = (id(compiled), n)
        hit = self._expanded_cache.get(key)
        if hit is None:
            state = compiled.construct_expanded_state({"uids": [""] * n})
            names = None if state.positiontup is not None else list(state.parameters)
            hit = self._expanded_cache[key] = (state.statement, names)
        return hit

    def idempotent(
        self, key: str, route: str, conn: Connection | None = None
    ) -> IdempotentRecord | None:
        """The stored response of ``key`` on ``route``: in the transaction ``conn``, or,
        without one, on the hot cursor (as ``history``)."""
        if conn is not None:
            row = conn.execute(_IDEMPOTENT_GET, {"key": key, "route": route}).first()
            return IdempotentRecord.from_row(row)
        sql, order = self._key_sql
        with self._translate(), self._hot_cursor() as (_raw, cur):
            cur.execute(sql, _bind(order, {"key": key, "route": route}))
            row = cur.fetchone()
        return IdempotentRecord.from_row(row)

    # -- folded user state (service.user_state) -------------------------------------------
    def read_state_row(self, user_id: str) -> tuple[str, str] | None:
        """``(catalog fingerprint, state JSON)`` of one user, on the hot cursor (one indexed
        row: what every next-step reads); None for a user with no state."""
        sql, order = self._state_sql
        with self._translate(), self._hot_cursor() as (_raw, cur):
            cur.execute(sql, _bind(order, {"uid": user_id}))
            row = cur.fetchone()
        return None if row is None else (row[0], row[1])

    def read_state_rows(self, user_ids: Iterable[str]) -> dict[str, tuple[str, str] | None]:
        """``read_state_row`` for each distinct user, one query per chunk (a batch's read).

        The ``IN`` list's SQL is expanded once per chunk length (SQLAlchemy's per-execution
        expansion was a tenth of a 1,000-user batch's flow). On SQLite the chunks are read in
        one read transaction (one snapshot); PostgreSQL reads are read committed."""
        wanted = list(dict.fromkeys(user_ids))
        out: dict[str, tuple[str, str] | None] = dict.fromkeys(wanted)
        with self._translate(), self._hot_cursor() as (raw, cur):
            snapshot = self.embedded and len(wanted) > _CHUNK
            if snapshot:
                cur.execute("BEGIN")
            try:
                for start in range(0, len(wanted), _CHUNK):
                    chunk = wanted[start : start + _CHUNK]
                    sql, names = self._expanded(self._states_compiled, len(chunk))
                    params = chunk if names is None else dict(zip(names, chunk, strict=True))
                    cur.execute(sql, params)
                    for uid, fingerprint, state in cur.fetchall():
                        out[uid] = (fingerprint, state)
            finally:
                if snapshot:
                    raw.rollback()  # it only read
        return out

    def get_state(self, conn: Connection, user_id: str) -> tuple[str, str, float] | None:
        """``(catalog fingerprint, state JSON, newest folded ts)`` inside a transaction."""
        row = conn.execute(_STATE_FOR_WRITE, {"uid": user_id}).first()
        return None if row is None else (row[0], row[1], float(row[2]))

    @staticmethod
    def state_row(user_id: str, fingerprint: str, state: str, last_ts: float) -> dict[str, Any]:
        return {
            "user_id": user_id,
            "catalog": fingerprint,
            "state": state,
            "last_ts": last_ts,
            "updated_at": time.time(),
        }

    def put_state(
        self,
        conn: Connection,
        user_id: str,
        fingerprint: str,
        state: str,
        last_ts: float,
        *,
        exists: bool,
    ) -> None:
        """Write one user's state (the caller holds the user's lock, so no one races it)."""
        row = self.state_row(user_id, fingerprint, state, last_ts)
        if exists:
            values = {k: v for k, v in row.items() if k != "user_id"}
            conn.execute(update(user_state).where(_s.user_id == user_id).values(**values))
        else:
            conn.execute(insert(user_state), row)

    def insert_states(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            conn.execute(insert(user_state), list(rows))

    def delete_states(self, conn: Connection) -> None:
        conn.execute(delete(user_state))

    def iter_all_events(self, conn: Connection) -> Iterator[tuple[Any, ...]]:
        """Every outcome as ``(user_id, step, outcome, ts, context)`` in (user, ts, id)
        order, streamed (a server-side cursor on PostgreSQL): ``sync_states``' one pass."""
        result = conn.execute(_ALL_EVENTS.execution_options(yield_per=2000))
        for row in result:
            e = _history_event(row)
            yield (row[0], e.step, e.outcome, e.ts, e.context)

    def history_page(
        self, conn: Connection, user_id: str, after: tuple[float, int] | None, limit: int
    ) -> list[tuple[int, HistoryEvent]]:
        """Up to ``limit`` of the user's outcomes after the ``(ts, id)`` cursor, oldest first,
        each with its id (the next cursor)."""
        stmt = select(*_PAGE_COLUMNS).select_from(_HISTORY_FROM).where(_o.user_id == user_id)
        if after is not None:
            ts, oid = after
            stmt = stmt.where(or_(_o.ts > ts, and_(_o.ts == ts, _o.id > oid)))
        stmt = stmt.order_by(_o.ts, _o.id).limit(limit)
        return [(int(row[0]), _history_event(row[1:])) for row in conn.execute(stmt)]

    def get_meta(self, conn: Connection, key: str) -> str | None:
        row = conn.execute(select(_m.value).where(_m.key == key)).first()
        return None if row is None else str(row[0])

    def put_meta(self, conn: Connection, key: str, value: str) -> None:
        if conn.execute(update(store_meta).where(_m.key == key).values(value=value)).rowcount:
            return
        conn.execute(insert(store_meta), {"key": key, "value": value})

    def lock_migrations(self, conn: Connection) -> None:
        """Serialise start-up work of several workers (SQLite's BEGIN IMMEDIATE already does)."""
        if self.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})

    # -- decisions ---------------------------------------------------------------------------
    async def commit_decisions(self, rows: Rows, shadow_rows: Rows = (), keys: Rows = ()) -> None:
        """Insert decisions (and their shadows, and the idempotency ``keys`` records of keyed
        requests, in the same transaction) durably: returns once they are committed. A key
        another request stored first raises ``IntegrityError`` for this request alone.

        Concurrent requests share commits (``service.group_commit``): on SQLite the group is
        committed on the event loop one iteration later (a WAL commit without fsync is ~0.1
        ms, less than a hand-off to a thread: measured with wrk at 16 connections, a writer
        thread served 850 requests/s against 1,130 inline); a database server pays a round
        trip and a log flush per commit, so there a writer thread commits the groups.
        """
        committer = self._committer
        if committer is None:
            with self._committer_lock:
                if self._committer is None:
                    if self.embedded:
                        self._committer = LoopGroupCommitter(self.insert_decision_rows)
                    else:
                        self._committer = GroupCommitter(self.insert_decision_rows)
                committer = self._committer
        await committer.submit(rows, shadow_rows, keys)

    def _start_checkpointer(self) -> None:
        """Move SQLite's WAL checkpoints off the commit path, from this store's first write on.

        By default the commit that grows the WAL past 1,000 pages copies it back into the
        database and syncs it, stalling that commit (and every request sharing it) for tens to
        hundreds of milliseconds: measured here, the slowest of 6,000 commits took 385 ms with
        it and 10 ms without. A background thread checkpoints passively (never blocking
        writers or readers) every second instead; durability is the WAL's either way. Every
        write path starts it (a ``next-step:batch`` or outcomes-only workload as well as
        next-steps: when only the next-step commits started it, every sixth batch of 1,000
        paid a ~35 ms checkpoint). A store that never writes starts no thread.
        """
        if self.dialect != "sqlite" or self._checkpointer is not None:
            return
        with self._committer_lock:
            if self._checkpointer is not None:
                return
            self._pragmas["wal_autocheckpoint"] = 0
            self.engine.dispose()  # every connection reopens with the new pragma
            self._checkpointer = _Checkpointer(self.engine)

    def insert_decision_rows(self, rows: Rows, shadow_rows: Rows = (), keys: Rows = ()) -> None:
        """One transaction of decisions, shadow decisions and idempotency records on the hot
        cursor (every next-step's write, and a whole ``next-step:batch``).

        The statements are SQLAlchemy's own, compiled once for this dialect; running them
        through a Core ``Connection`` cost 355 us per single-row commit here against 99 us
        raw, and this is the one write every next-step makes. A driver's IntegrityError is
        raised as is; other driver errors become ``StoreUnavailable`` (503), as elsewhere.
        """
        with self._writer(), self._translate(), self._hot_cursor() as (raw, cur):
            if self.dialect == "sqlite":
                cur.execute("BEGIN IMMEDIATE")
            try:
                for table, batch in (
                    (decisions, rows),
                    (shadow_decisions, shadow_rows),
                    (idempotency, keys),
                ):
                    if batch:
                        sql, order = self._insert_sql(table, tuple(batch[0]))
                        if len(order) > 1:  # positional: each row's values in the SQL's order
                            params = list(map(operator.itemgetter(*order), batch))
                        elif order:
                            params = [(r[order[0]],) for r in batch]
                        else:  # named parameters
                            params = [dict(r) for r in batch]
                        cur.executemany(sql, params)
                raw.commit()
            except BaseException:
                raw.rollback()
                raise

    def _hot_cursor(self) -> contextlib.AbstractContextManager[tuple[Any, Any]]:
        """The connection and cursor for the per-request statements (history read, decision
        insert): this thread's own on SQLite, a pooled one on a server."""
        if self._hot is not None:
            return self._hot.cursor()
        return _raw_cursor(self.engine)

    def _insert_sql(self, table: Any, columns: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
        """``INSERT`` of ``columns`` into ``table`` for this dialect, and the parameter order
        (empty when the driver takes named parameters)."""
        key = (table.name, columns)
        cached = self._insert_cache.get(key)
        if cached is None:
            cached = self._insert_cache[key] = _raw_sql(
                insert(table), self.engine.dialect, column_keys=columns
            )
        return cached

    def insert_decisions(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            conn.execute(_INSERT_DECISION, list(rows))

    def get_decision(self, conn: Connection, decision_id: str) -> Any | None:
        return conn.execute(_GET_DECISION, {"did": decision_id}).first()

    # -- outcomes ----------------------------------------------------------------------------
    def lock_user(self, conn: Connection, user_id: str) -> None:
        """Serialise outcome writes per user (SQLite's BEGIN IMMEDIATE already serialises all)."""
        if self.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:u))"), {"u": user_id})

    def outcome_of(self, conn: Connection, decision_id: str) -> Any | None:
        return conn.execute(_OUTCOME_OF, {"did": decision_id}).first()

    def has_converted(self, conn: Connection, user_id: str, goals: Sequence[str]) -> bool:
        row = conn.execute(_HAS_CONVERTED, {"uid": user_id, "goals": list(goals)}).first()
        return row is not None

    def insert_outcome(self, conn: Connection, values: Mapping[str, Any]) -> int:
        result = conn.execute(_INSERT_OUTCOME, dict(values))
        return int(result.inserted_primary_key[0])

    # -- idempotency -------------------------------------------------------------------------
    def put_idempotent(self, conn: Connection, record: Mapping[str, Any]) -> None:
        """Store a response for its key (an ``idempotency_row``) in the transaction ``conn``."""
        conn.execute(_INSERT_IDEMPOTENT, dict(record))

    # -- served catalog ----------------------------------------------------------------------
    def remember_catalog(self, content: str, sha256: str, source: str | None = None) -> None:
        """Record that this catalog is being served (export and report read it back)."""
        now = time.time()
        t = served_catalogs
        try:
            with self.write() as conn:
                conn.execute(
                    insert(t).values(
                        sha256=sha256,
                        content=content,
                        source=source,
                        first_served_at=now,
                        last_served_at=now,
                    )
                )
        except IntegrityError:  # served before (or another worker recorded it just now)
            with self.write() as conn:
                conn.execute(
                    t.update().where(t.c.sha256 == sha256).values(last_served_at=now, source=source)
                )

    def served_catalog(self) -> tuple[str, str] | None:
        """``(content, sha256)`` of the catalog served last, or None."""
        t = served_catalogs
        with self.read() as conn:
            row = conn.execute(
                select(t.c.content, t.c.sha256).order_by(t.c.last_served_at.desc()).limit(1)
            ).first()
        return None if row is None else (str(row[0]), str(row[1]))

    def prune_idempotency(self, ttl_seconds: float) -> int:
        """Forget idempotency keys older than the TTL; returns how many went."""
        cutoff = time.time() - ttl_seconds
        with self.write() as conn:
            result = conn.execute(delete(idempotency).where(idempotency.c.created_at < cutoff))
            return int(result.rowcount or 0)


def _raw_sql(stmt: Any, dialect: Any, **compile_kw: Any) -> tuple[str, tuple[str, ...]]:
    """A SQLAlchemy statement as this dialect's SQL for a raw DBAPI cursor, with its parameter
    names in order (empty when the driver takes named parameters)."""
    compiled = stmt.compile(dialect=dialect, **compile_kw)
    return str(compiled), tuple(compiled.positiontup or ()) if compiled.positional else ()


def _bind(order: tuple[str, ...], values: Mapping[str, Any]) -> Any:
    """``values`` as the parameters of a ``_raw_sql`` statement."""
    return tuple(values[k] for k in order) if order else values


def _history_event(row: Sequence[Any]) -> HistoryEvent:
    """One row of ``_HISTORY_*`` as a ``HistoryEvent``: an offer's context is the decision's,
    an organic outcome's its own."""
    _uid, did, step, outcome, ts, octx, dctx = row
    return HistoryEvent(did, step, outcome, ts, _loads(dctx if did is not None else octx))


@contextmanager
def _raw_cursor(engine: Engine) -> Iterator[tuple[Any, Any]]:
    """A pooled DBAPI connection and a cursor on it, both given back on exit (the pool rolls
    back anything left open). For the statements where SQLAlchemy's per-execution work costs
    more than the statement."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        try:
            yield raw, cur
        finally:
            cur.close()
    finally:
        raw.close()


class _ThreadConnections:
    """One SQLite connection per thread for the statements every request runs.

    Checking a connection out of SQLAlchemy's pool and back in (with its reset) cost about
    as much as the SQLite statements themselves (~25 us each way). On SQLite a request's
    statements run on the event loop's thread (or a worker thread for a batch), one at a time
    per thread, so each thread keeps one connection of its own, opened through the engine
    (same pragmas, same connect hooks) and detached from the pool. It is closed when its
    thread ends, when it raised (the next use opens another), by its own thread at its next
    use after ``engine.dispose()`` (as pooled connections are: new pragmas, a test's connect
    hook), and by ``close_all`` at shutdown.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: dict[int, weakref.finalize] = {}
        self._generation = 0
        event.listen(engine, "engine_disposed", self._stale)

    def _stale(self, _engine: Engine) -> None:
        """``engine.dispose()``: every thread replaces its connection at its next use (not
        closed here: another thread may be using it right now)."""
        with self._lock:
            self._generation += 1

    @contextmanager
    def cursor(self) -> Iterator[tuple[Any, Any]]:
        owned = getattr(self._local, "owned", None)
        if owned is not None and owned.generation != self._generation:
            self._local.owned = None
            self._close(id(owned))
            owned = None
        if owned is None:
            owned = self._connect()
        try:
            yield owned.conn, owned.cursor
        except BaseException:
            self._local.owned = None  # its finalizer closes the connection
            self._close(id(owned))
            raise

    def _connect(self) -> _Owned:
        fairy = self._engine.raw_connection()
        conn = fairy.driver_connection
        fairy.detach()  # ours until closed: the pool neither resets nor recycles it
        owned = _Owned(conn, conn.cursor(), self._generation)
        with self._lock:
            self._open[id(owned)] = weakref.finalize(owned, _close_quietly, conn)
        self._local.owned = owned  # dropped with the thread: the finalizer closes it
        return owned

    def _close(self, key: int) -> None:
        with self._lock:
            fin = self._open.pop(key, None)
        if fin is not None:
            fin()

    def close_all(self) -> None:
        """Close every thread's connection (shutdown: no request is running any more)."""
        with self._lock:
            self._generation += 1
            fins, self._open = list(self._open.values()), {}
        for fin in fins:
            fin()


@dataclass
class _Owned:
    conn: Any
    cursor: Any
    generation: int


def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.rollback()
        conn.close()


def _make_engine(
    url: str, *, pool_size: int, max_overflow: int, pragmas: dict[str, str | int]
) -> Engine:
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if not u.database or u.database == ":memory:":
            raise ValueError(
                "the store needs a SQLite *file* (an in-memory database is per connection)"
            )
        if not u.query.get("uri"):  # a plain path: create its directory on first use
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            u,
            connect_args={"check_same_thread": False, "timeout": 10.0},
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=10,
        )
        if pragmas["synchronous"] not in ("FULL", "NORMAL"):
            raise ValueError("sqlite synchronous must be FULL or NORMAL")
        event.listen(engine, "connect", functools.partial(_sqlite_on_connect, pragmas))
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    connect_args: dict[str, Any] = {}
    if u.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = 5
    return create_engine(
        u,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=10,
        connect_args=connect_args,
    )


def _sqlite_on_connect(pragmas: dict[str, str | int], dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _sqlite_on_begin)
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={pragmas['synchronous']}")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA mmap_size={int(pragmas.get('mmap_size', 0))}")
        if "wal_autocheckpoint" in pragmas:
            cur.execute(f"PRAGMA wal_autocheckpoint={int(pragmas['wal_autocheckpoint'])}")
    finally:
        cur.close()


def _sqlite_on_begin(conn: Connection) -> None:
    write = conn.get_execution_options().get("nextstep_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class _Checkpointer:
    """A thread running ``PRAGMA wal_checkpoint(PASSIVE)`` every ``interval`` seconds."""

    def __init__(self, engine: Engine, interval: float = 1.0) -> None:
        self._engine = engine
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nextstep-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                with _raw_cursor(self._engine) as (_raw, cur):
                    cur.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except Exception as exc:  # busy, disk trouble: the next round tries again
                log.debug("WAL checkpoint skipped: %s", exc)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(10)
