"""Group commit: many concurrent requests' decision rows in one transaction.

A decision is acknowledged only after its row is committed. Committing each request's single
row in its own transaction makes the commit (the write-ahead-log append on SQLite, a round trip
and a flush on PostgreSQL) the most expensive part of a request. One writer thread instead takes
every row queued while the previous commit ran and commits them together: under load a commit
carries many requests, and with a single request in flight it is exactly the old one commit per
request. Nothing is acknowledged before its commit, so durability is unchanged; a failed group
is retried row by row, so one bad row cannot fail the requests it happened to share a group with.

``GroupCommitter`` (a writer thread) is for database servers (PostgreSQL), where a commit is a
round trip and a log flush that must not stall the event loop. ``LoopGroupCommitter`` is for
SQLite: its commit is a local WAL append of ~0.1 ms, cheaper than a hand-off to a thread, so it
runs on the event loop itself, one loop iteration after the first row of a group arrived; every
request that reached its commit in the meantime (under load, the ones read from the sockets in
the same iteration) shares it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("nextstep.service.store")

Rows = Sequence[Mapping[str, Any]]


@dataclass
class _Pending:
    rows: Rows
    shadow_rows: Rows
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop
    keys: Rows = ()  # idempotency records committed with the rows


class GroupCommitter:
    """A writer thread that commits queued ``(decisions, shadow decisions)`` groups.

    ``write(rows, shadow_rows, keys)`` is the store's one-transaction insert (``keys``: the
    idempotency records of keyed requests); ``max_rows`` bounds a group so one commit never
    holds the write lock for long.
    """

    def __init__(self, write: Callable[[Rows, Rows, Rows], None], *, max_rows: int = 512) -> None:
        self._write = write
        self._max_rows = max_rows
        self._pending: list[_Pending] = []
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="nextstep-writer", daemon=True)
        self._thread.start()

    async def submit(self, rows: Rows, shadow_rows: Rows = (), keys: Rows = ()) -> None:
        """Return once the rows are committed; raise what the commit raised."""
        loop = asyncio.get_running_loop()
        item = _Pending(rows, shadow_rows, loop.create_future(), loop, keys)
        with self._cv:
            if self._closed:
                raise RuntimeError("the store is closed")
            self._pending.append(item)
            self._cv.notify()
        await item.future

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is queued, then stop the writer thread."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout)

    # -- writer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if not self._pending:
                    return
                group = self._take()
            self._commit(group)

    def _take(self) -> list[_Pending]:
        return _take(self._pending, self._max_rows)

    def _commit(self, group: list[_Pending]) -> None:
        for p, err in zip(group, _commit_group(self._write, group), strict=True):
            _settle_from_here(p, err)


class LoopGroupCommitter:
    """Groups committed on the event loop (embedded SQLite; see the module docstring).

    ``submit`` queues the rows and, for the first of a group, schedules the commit with
    ``call_soon``: it runs after every request already runnable in this loop iteration has
    queued its own. Each loop (a test process may run several apps) has its own queue.
    """

    def __init__(self, write: Callable[[Rows, Rows, Rows], None], *, max_rows: int = 512) -> None:
        self._write = write
        self._max_rows = max_rows
        self._pending: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}

    async def submit(self, rows: Rows, shadow_rows: Rows = (), keys: Rows = ()) -> None:
        """Return once the rows are committed; raise what the commit raised."""
        loop = asyncio.get_running_loop()
        item = _Pending(rows, shadow_rows, loop.create_future(), loop, keys)
        queue = self._pending.get(loop)
        if queue is None:
            queue = self._pending[loop] = []
            loop.call_soon(self._flush, loop)
        queue.append(item)
        await item.future

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is queued now (the scheduled flushes then find nothing)."""
        for loop in list(self._pending):
            self._flush(loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        queue = self._pending.pop(loop, [])
        while queue:
            group = _take(queue, self._max_rows)
            for p, err in zip(group, _commit_group(self._write, group), strict=True):
                _settle_from_here(p, err)


def _settle_from_here(p: _Pending, error: BaseException | None) -> None:
    """Settle on the request's loop: directly from its own thread (a scheduled flush), else
    through ``call_soon_threadsafe`` (the writer thread, or ``close`` from another thread)."""
    try:
        here = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    if here is p.loop:
        _settle(p.future, error)
        return
    try:
        p.loop.call_soon_threadsafe(_settle, p.future, error)
    except RuntimeError:  # the request's event loop is gone (shutdown): nobody waits
        log.debug("decision committed after its event loop closed")


def _take(pending: list[_Pending], max_rows: int) -> list[_Pending]:
    """The next group from the front of ``pending``: at least one item, at most ``max_rows``
    rows otherwise."""
    group: list[_Pending] = []
    n = 0
    while pending and (not group or n + len(pending[0].rows) <= max_rows):
        item = pending.pop(0)
        group.append(item)
        n += len(item.rows)
    return group


def _commit_group(
    write: Callable[[Rows, Rows, Rows], None], group: list[_Pending]
) -> list[BaseException | None]:
    """Commit a group in one transaction; if that fails, item by item, so a bad row (or a
    key another request of the group took first) fails alone. The error (or None) of each."""
    try:
        write(
            [r for p in group for r in p.rows],
            [r for p in group for r in p.shadow_rows],
            [k for p in group for k in p.keys],
        )
        return [None] * len(group)
    except Exception as exc:  # handed to the waiting requests
        if len(group) == 1:
            return [exc]
    errors: list[BaseException | None] = []
    for p in group:
        try:
            write(p.rows, p.shadow_rows, p.keys)
            errors.append(None)
        except Exception as one:
            errors.append(one)
    return errors


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():  # the client went away and the request was cancelled
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
