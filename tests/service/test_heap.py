"""The start-up heap freeze, and the refreeze after a model swap that lets the old model go."""

from __future__ import annotations

import gc
import weakref

from service import heap


class _Node:
    """An object in a reference cycle: only the cyclic collector can free it."""

    def __init__(self) -> None:
        self.me = self


def test_refreeze_collects_cycles_a_reload_dropped() -> None:
    old_model = _Node()
    ref = weakref.ref(old_model)
    with heap.frozen_heap():  # the "start-up": old_model is alive and gets frozen
        assert gc.get_freeze_count() > 0
        del old_model  # the reload replaced it
        gc.collect()
        assert ref() is not None  # frozen cycles are never collected ...
        heap.refreeze_heap()
        assert ref() is None  # ... until the heap is thawed, collected and frozen again
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0  # the context undid the freeze


def test_refreeze_is_a_no_op_before_start_up() -> None:
    cycle = _Node()
    ref = weakref.ref(cycle)
    del cycle
    heap.refreeze_heap()  # not settled: must not freeze a test process
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert ref() is None
