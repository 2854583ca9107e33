"""The next-step hot path's store calls: the transaction-free history read and group commit.

Both run on SQLite and a real PostgreSQL: the fast read must return exactly what the
transactional ``history`` returns, and grouped inserts must commit every acknowledged row,
share commits under concurrency, and keep one bad row from failing its neighbours.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from service.group_commit import GroupCommitter, LoopGroupCommitter
from service.store import Store


def _row(user_id: str, ts: float, *, decision_id: str | None = None) -> dict[str, Any]:
    return {
        "decision_id": decision_id or uuid.uuid4().hex,
        "user_id": user_id,
        "ts": ts,
        "created_at": ts,
        "step": "read_intro",
        "arm": "champion",
        "policy": "planner",
        "model_version": "1",
        "propensity": 1.0,
        "explored": False,
        "p_accept": 0.5,
        "context": '{"channel": "email"}',
        "candidates": "[]",
        "reason": None,
        "request_hash": None,
    }


@pytest.fixture
def store(db_url: str) -> Any:
    s = Store(db_url)
    s.migrate()
    yield s
    s.dispose()


def _count(store: Store) -> int:
    with store.read() as conn:
        return int(conn.exec_driver_sql("SELECT COUNT(*) FROM decisions").scalar())


def test_fast_history_read_equals_the_transactional_one(store: Store) -> None:
    rows = [_row("u1", 100.0 + i) for i in range(3)] + [_row("u2", 50.0)]
    with store.write() as conn:
        store.insert_decisions(conn, rows)
        for i, (r, outcome) in enumerate(
            zip(rows, ["accepted", "declined", "dropped", "accepted"], strict=True)
        ):
            store.insert_outcome(
                conn,
                {"decision_id": r["decision_id"], "user_id": r["user_id"], "step": r["step"],
                 "outcome": outcome, "ts": r["ts"] + 1, "context": None,
                 "created_at": 1.0 + i},
            )  # fmt: skip
        store.insert_outcome(  # organic: no decision, its own context
            conn,
            {"decision_id": None, "user_id": "u1", "step": "watch_clip", "outcome": "accepted",
             "ts": 101.5, "context": '{"device": "mobile"}', "created_at": 9.0},
        )  # fmt: skip
    for user in ("u1", "u2", "nobody", "o'brien; DROP TABLE outcomes"):
        with store.read() as conn:
            expected = store.history(user, conn)
        assert store.history(user) == expected
    assert [e.step for e in store.history("u1")] == [
        "read_intro",
        "watch_clip",
        "read_intro",
        "read_intro",
    ]
    assert store.history("u1")[1].context == {"device": "mobile"}
    assert store.history("u1")[0].context == {"channel": "email"}  # the decision's


def _put_states(store: Store, states: dict[str, str]) -> None:
    with store.write() as conn:
        for uid, state in states.items():
            store.put_state(conn, uid, "fp", state, 1.0, exists=False)


@pytest.mark.parametrize("chunk", [500, 2])
def test_batch_state_read_equals_one_read_per_user(
    store: Store, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``read_state_rows`` (a batch's read, on the hot cursor) answers as ``read_state_row``
    does for each user, in one chunk or in several of different lengths."""
    monkeypatch.setattr("service.store._CHUNK", chunk)
    _put_states(store, {"u0": '{"a": 0}', "u1": '{"a": 1}', "u2": '{"a": 2}'})
    users = ["u2", "nobody", "u0", "o'brien; DROP TABLE user_state", "u1", "u0"]
    got = store.read_state_rows(users)
    assert got == {u: store.read_state_row(u) for u in dict.fromkeys(users)}
    assert list(got) == list(dict.fromkeys(users))  # distinct, in the order asked
    assert got["u1"] == ("fp", '{"a": 1}') and got["nobody"] is None
    assert store.read_state_rows(["u1"]) == {"u1": ("fp", '{"a": 1}')}  # another length
    assert store.read_state_rows([]) == {}
    if store.embedded:
        with store._hot_cursor() as (raw, _cur):  # the read left no transaction open...
            assert not raw.in_transaction
    store.insert_decision_rows([_row("after", 1.0)])  # ...so this thread can still write
    assert _count(store) == 1


def test_a_multi_chunk_batch_read_is_one_snapshot_on_sqlite(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state committed by another connection between two chunks of one
    ``read_state_rows`` is not seen by it (SQLite: one read transaction), and is seen by the
    next read."""
    monkeypatch.setattr("service.store._CHUNK", 1)
    store, other = Store(sqlite_url), Store(sqlite_url)
    try:
        store.migrate()
        expand = store._expanded
        calls: list[int] = []

        def between_chunks(compiled: Any, n: int) -> Any:
            calls.append(n)
            if len(calls) == 2:  # the first chunk ("early") has been read
                _put_states(other, {"late": '{"late": true}'})
            return expand(compiled, n)

        monkeypatch.setattr(store, "_expanded", between_chunks)
        assert store.read_state_rows(["early", "late"]) == {"early": None, "late": None}
        assert len(calls) == 2
        assert store.read_state_rows(["late"]) == {"late": ("fp", '{"late": true}')}
    finally:
        store.dispose()
        other.dispose()


async def _queued(
    committer: GroupCommitter, writing: list[int], n: int, timeout: float = 30.0
) -> None:
    """Wait until all ``n`` submissions are either in the commit in progress (``writing``:
    the sizes of the groups the writer took) or queued behind it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        with committer._cv:
            if sum(writing) + len(committer._pending) >= n:
                return
        assert asyncio.get_running_loop().time() < deadline, "submissions never queued"
        await asyncio.sleep(0.005)


def test_concurrent_decisions_share_commits_and_all_land(store: Store) -> None:
    calls: list[int] = []
    writing: list[int] = []
    gate = threading.Event()

    def write(rows: Any, shadows: Any, keys: Any = ()) -> None:
        writing.append(len(rows))
        gate.wait(30)  # the first commit waits until every request has queued behind it
        calls.append(len(rows))
        store.insert_decision_rows(rows, shadows, keys)

    committer = GroupCommitter(write)

    async def main() -> None:
        tasks = [asyncio.create_task(committer.submit([_row(f"u{i}", 1.0)])) for i in range(64)]
        await _queued(committer, writing, 64)  # the writer holds one group, the rest wait
        gate.set()
        await asyncio.gather(*tasks)

    try:
        asyncio.run(main())
    finally:
        committer.close()
    assert _count(store) == 64  # every acknowledged decision is stored
    assert sum(calls) == 64
    assert len(calls) <= 2  # the group in progress, then all the others at once


def test_one_bad_row_fails_alone(store: Store) -> None:
    taken = _row("dup", 1.0)
    with store.write() as conn:
        store.insert_decisions(conn, [taken])
    gate = threading.Event()
    writing: list[int] = []

    def write(rows: Any, shadows: Any, keys: Any = ()) -> None:
        writing.append(len(rows))
        gate.wait(30)
        store.insert_decision_rows(rows, shadows, keys)

    committer = GroupCommitter(write)

    async def main() -> list[Any]:
        good = [_row(f"ok{i}", 2.0) for i in range(10)]
        bad = _row("dup", 3.0, decision_id=taken["decision_id"])
        tasks = [asyncio.create_task(committer.submit([r])) for r in [*good[:5], bad, *good[5:]]]
        await _queued(committer, writing, 11)  # every row is in a group before any commits
        gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        results = asyncio.run(main())
    finally:
        committer.close()
    integrity = (IntegrityError, store.engine.dialect.loaded_dbapi.IntegrityError)
    assert [isinstance(r, integrity) for r in results].count(True) == 1
    assert isinstance(results[5], integrity)
    assert _count(store) == 11  # the ten good rows and the one that was there


def test_loop_committer_groups_what_one_loop_iteration_queued(store: Store) -> None:
    """On the event loop: every request that reached its commit before the next loop
    iteration shares one transaction; requests arriving later get the next one."""
    calls: list[int] = []

    def write(rows: Any, shadows: Any, keys: Any = ()) -> None:
        calls.append(len(rows))
        store.insert_decision_rows(rows, shadows, keys)

    committer = LoopGroupCommitter(write)

    async def main() -> None:
        first = [asyncio.create_task(committer.submit([_row(f"a{i}", 1.0)])) for i in range(20)]
        await asyncio.gather(*first)
        await committer.submit([_row("late", 2.0)], [])

    asyncio.run(main())
    assert calls == [20, 1]
    assert _count(store) == 21


def test_loop_committer_one_bad_row_fails_alone(store: Store) -> None:
    taken = _row("dup", 1.0)
    with store.write() as conn:
        store.insert_decisions(conn, [taken])
    committer = LoopGroupCommitter(store.insert_decision_rows)

    async def main() -> list[Any]:
        rows = [_row(f"ok{i}", 2.0) for i in range(6)]
        bad = _row("dup", 3.0, decision_id=taken["decision_id"])
        tasks = [asyncio.create_task(committer.submit([r])) for r in [*rows[:3], bad, *rows[3:]]]
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    integrity = (IntegrityError, store.engine.dialect.loaded_dbapi.IntegrityError)
    assert [isinstance(r, integrity) for r in results] == [False] * 3 + [True] + [False] * 3
    assert _count(store) == 7  # the six good rows and the one that was there


def test_commit_decisions_and_dispose_stops_the_background_threads(store: Store) -> None:
    """SQLite shares commits on the event loop (and checkpoints in a background thread); a
    database server gets the group committer's thread. ``dispose`` stops whichever runs."""

    async def main() -> None:
        await asyncio.gather(*(store.commit_decisions([_row("g", 1.0)]) for _ in range(5)))

    asyncio.run(main())
    assert _count(store) == 5
    if store.embedded:
        assert isinstance(store._committer, LoopGroupCommitter)
        thread = store._checkpointer._thread  # type: ignore[union-attr]
    else:
        assert store._checkpointer is None
        thread = store._committer._thread  # type: ignore[union-attr]
    assert thread.is_alive()
    store.dispose()
    assert not thread.is_alive()


def test_sqlite_checkpoints_in_the_background_not_at_commit(sqlite_url: str) -> None:
    """Once decisions are grouped, commits no longer copy the WAL back (autocheckpoint 0) and
    a background thread does: the database file itself grows without any commit doing it."""
    import time
    from pathlib import Path

    store = Store(sqlite_url)
    try:
        store.migrate()
        db = Path(store.engine.url.database or "")
        before = db.stat().st_size

        async def main() -> None:
            for i in range(20):
                await store.commit_decisions([_row(f"c{i}-{j}", 1.0) for j in range(200)])

        asyncio.run(main())
        with store.read() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        deadline = time.monotonic() + 10
        while db.stat().st_size <= before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert db.stat().st_size > before  # pages left the WAL for the database file
        assert _count(store) == 4000
    finally:
        store.dispose()


def test_sqlite_connections_map_the_file_as_configured(sqlite_url: str) -> None:
    for mib in (0, 64):
        store = Store(sqlite_url, sqlite_mmap_mib=mib)
        try:
            store.migrate()
            with store._hot_cursor() as (_raw, cur):
                assert cur.execute("PRAGMA mmap_size").fetchone()[0] == mib << 20
            with store.read() as conn:
                assert conn.exec_driver_sql("PRAGMA mmap_size").scalar() == mib << 20
        finally:
            store.dispose()


def test_sqlite_thread_connections_are_per_thread_and_replaced_after_an_error(
    sqlite_url: str,
) -> None:
    """Each thread reads on its own connection; one that raised is not used again; a
    thread's connection is closed when the thread ends."""
    import gc
    import sqlite3

    store = Store(sqlite_url)
    try:
        store.migrate()
        with store._hot_cursor() as (main_conn, _):
            pass
        with store._hot_cursor() as (again, _):
            assert again is main_conn
        seen: list[Any] = []

        def other() -> None:
            with store._hot_cursor() as (conn, _):
                seen.append(conn)
            store.history("u")

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert seen and seen[0] is not main_conn
        del t
        gc.collect()
        with pytest.raises(sqlite3.ProgrammingError):  # closed with its thread
            seen[0].execute("SELECT 1")
        with pytest.raises(sqlite3.OperationalError), store._hot_cursor() as (_, cur):
            cur.execute("SELECT * FROM no_such_table")
        with store._hot_cursor() as (fresh, cur):
            assert fresh is not main_conn
            assert cur.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(sqlite3.ProgrammingError):
            main_conn.execute("SELECT 1")
        store.engine.dispose()  # like pooled connections: replaced at the next use
        with store._hot_cursor() as (after_dispose, _):
            assert after_dispose is not fresh
        with pytest.raises(sqlite3.ProgrammingError):
            fresh.execute("SELECT 1")
    finally:
        store.dispose()


@pytest.mark.parametrize("path", ["batch", "outcomes"])
def test_sqlite_checkpoints_in_the_background_for_every_write_path(
    sqlite_url: str, path: str
) -> None:
    """A ``next-step:batch`` (``insert_decision_rows`` from a worker thread) or an outcome
    (``Store.write``) starts the background checkpointer as a next-step's commit does: with only
    batches arriving, SQLite's own autocheckpoint used to stall every sixth batch of 1,000."""
    schema = Store(sqlite_url)
    schema.migrate()  # a write itself: the schema comes from another store
    schema.dispose()
    store = Store(sqlite_url)
    try:
        assert store.history("u") == []  # a hot connection opened before any write
        assert store._checkpointer is None
        if path == "batch":
            store.insert_decision_rows([_row(f"b{j}", 1.0) for j in range(50)])
        else:
            with store.write() as conn:
                conn.exec_driver_sql("SELECT 1")
        assert store._checkpointer is not None and store._checkpointer._thread.is_alive()
        with store._hot_cursor() as (_raw, cur):  # the connection a batch's insert runs on
            assert cur.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        with store.read() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    finally:
        store.dispose()


def test_a_store_that_only_reads_starts_no_checkpointer(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    try:
        with store.read() as conn:
            conn.exec_driver_sql("SELECT 1")
        assert store._checkpointer is None
    finally:
        store.dispose()
