"""Planner misses of concurrent requests, planned together off the event loop.

A next-step whose look-ahead is not in the planner's cache (the first request after an outcome,
or after the clock moved the user's time features) costs 2.5-3.5 ms planned alone: a dozen small
LightGBM calls and the look-ahead's numpy work, mostly fixed cost per call. ``Planner.plan_many``
plans many roots in one pass for a fraction of that per root (16 roots: ~0.6 ms each), and its
answer for each root is exactly the one it would get alone.

``LoopPlanBatcher`` gives concurrent requests that pass. Misses queue on their event loop; a
pass runs on the batcher's planner thread and takes the misses queued when it starts (up to
``max_roots``); misses that arrive while it runs wait for the next pass, which starts as soon
as this one ends. So a
lone miss is planned at once (one thread hop, ~0.1 ms), and under load a pass holds the misses
that arrived during the previous one: passes grow with the load instead of the load queueing
behind single plans. (Passes run on the loop itself kept their size at the few requests that
happened to arrive in one loop iteration: 3 on average at 16 connections, measured.) LightGBM
releases the GIL, so the loop keeps parsing, reading and committing meanwhile. A cache hit never
waits.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from models.decide import PlanJob

log = logging.getLogger("nextstep.service.plan_batcher")

_Item = tuple[PlanJob, "asyncio.Future[None] | None"]


class LoopPlanBatcher:
    """Plans misses in passes on one planner thread, at most ``max_roots`` roots per pass.

    ``max_roots`` 1 plans every miss alone, inline on the caller's thread (the event loop).
    ``on_pass`` (if given) hears the number of roots of each ``plan_many`` call, for the
    metrics. ``close`` stops the planner thread (the app's shutdown).
    """

    def __init__(self, max_roots: int = 64, on_pass: Callable[[int], None] | None = None) -> None:
        if max_roots < 1:
            raise ValueError("max_roots must be at least 1")
        self.max_roots = max_roots
        self._on_pass = on_pass
        # a loop's waiting misses; a loop is here exactly while a pass is scheduled or running
        self._queues: dict[asyncio.AbstractEventLoop, list[_Item]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    async def plan(self, job: PlanJob) -> None:
        """Return once ``job`` is planned and its plan attached; raise what planning raised."""
        if self.max_roots == 1:
            error = self._plan_pass([(job, None)])[0][1]
            if error is not None:
                raise error
            return
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:  # start after the requests runnable now have queued theirs
            queue = self._queues[loop] = []
            loop.call_soon(self._start, loop)
        future: asyncio.Future[None] = loop.create_future()
        queue.append((job, future))
        await future

    def close(self) -> None:
        """Wait for a running pass and stop the planner thread (a later miss starts a new one)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    # -- on the event loop ---------------------------------------------------------------------
    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand up to ``max_roots`` live queued misses to the planner thread (the rest wait for
        the next pass, so no answer waits for more than one call), or go idle."""
        queue = self._queues[loop]
        live = [(job, fut) for job, fut in queue if fut is not None and not fut.done()]
        items, queue[:] = live[: self.max_roots], live[self.max_roots :]
        if not items:  # all cancelled (clients gone), or nothing arrived during the last pass
            del self._queues[loop]
            return
        try:
            running = loop.run_in_executor(self._planner_thread(), self._plan_pass, items)
        except BaseException as exc:  # no thread to plan on: fail these, stay usable
            for _, future in items:
                _settle(future, exc)
            loop.call_soon(self._start, loop)
            return
        running.add_done_callback(lambda done: self._finished(loop, items, done))

    def _finished(
        self,
        loop: asyncio.AbstractEventLoop,
        items: list[_Item],
        done: asyncio.Future[list[tuple[_Item, BaseException | None]]],
    ) -> None:
        """Settle a pass's requests, then start the next pass with what arrived meanwhile."""
        try:
            error = done.exception()
            if error is not None:  # a bug in the pass itself: nobody may wait forever
                log.error("planning pass failed", exc_info=error)
                settled: list[tuple[_Item, BaseException | None]] = [(i, error) for i in items]
            else:
                settled = done.result()
            for (_, future), err in settled:
                _settle(future, err)
        finally:
            self._start(loop)

    def _planner_thread(self) -> ThreadPoolExecutor:
        with self._lock:  # event loops of several threads may share one batcher
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="nextstep-planner")
            return self._executor

    # -- on the planner thread -------------------------------------------------------------
    def _plan_pass(self, items: list[_Item]) -> list[tuple[_Item, BaseException | None]]:
        """Plan ``items`` (one ``plan_many`` call per planner); each item's error or None."""
        groups: dict[tuple[int, int, int], list[_Item]] = {}
        for item in items:
            job = item[0]
            key = (id(job.planner), id(job.scorer), id(job.catalog))
            groups.setdefault(key, []).append(item)
        return [r for group in groups.values() for r in self._plan_call(group)]

    def _plan_call(self, items: list[_Item]) -> list[tuple[_Item, BaseException | None]]:
        """One ``plan_many`` call; if it fails, each root alone, so a bad root fails alone."""
        head = items[0][0]
        try:
            planned = head.planner.plan_many([j.root for j, _ in items], head.scorer, head.catalog)
        except Exception as exc:
            if len(items) == 1:
                return [(items[0], exc)]
            return [r for item in items for r in self._plan_call([item])]
        for (job, _), plan in zip(items, planned, strict=True):
            job.attach(plan)
        if self._on_pass is not None:
            try:
                self._on_pass(len(items))
            except Exception:  # the metrics must not fail requests that were planned
                log.exception("on_pass failed")
        return [(item, None) for item in items]


def _settle(future: Any, error: BaseException | None) -> None:
    if future is None or future.done():  # inline (max_roots 1), or the request was cancelled
        return
    if error is None:
        future.set_result(None)
    elif isinstance(error, StopIteration):  # a future refuses it (it would end a coroutine)
        future.set_exception(RuntimeError(f"planning raised {error!r}"))
    else:
        future.set_exception(error)
