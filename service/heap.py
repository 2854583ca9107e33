"""Keep the garbage collector off the request path.

A serving process holds a million long-lived objects (MLflow, pandas, scikit-learn, the model)
that never become garbage, and CPython's full collections walk all of them: measured here,
one took a few hundred milliseconds, which was the whole p99 of ``next-step``, and GC time
halved ``next-step:batch`` throughput. ``gc.freeze()`` moves everything alive after start-up
into a permanent generation the collector skips; the young-generation threshold is raised so
the many short-lived objects of a request are collected in fewer, larger passes.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_GEN0_THRESHOLD = 20_000
_settled = False


def settle_heap() -> tuple[int, int, int]:
    """Collect once, then freeze the survivors (a server calls it after start-up, for good).

    Returns the previous thresholds."""
    global _settled
    old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(max(_GEN0_THRESHOLD, old[0]), old[1], old[2])
    _settled = True
    return old


def refreeze_heap() -> None:
    """After a model swap: frozen objects are never collected, so the replaced model's
    reference cycles would stay forever; thaw, collect once (a pause of a few hundred ms, once
    per reload, off the request threads), freeze again. Nothing to do before ``settle_heap``."""
    if not _settled:
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()


@contextmanager
def frozen_heap() -> Iterator[None]:
    """``settle_heap`` for the duration of a batch job, undone afterwards."""
    global _settled
    was = _settled
    old = settle_heap()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*old)
        _settled = was
