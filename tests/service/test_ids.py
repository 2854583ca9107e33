"""Decision ids: UUID version 7 layout, ordered by creation time, unguessable in the rest."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from service.ids import new_decision_id, new_decision_ids


def _singles(n: int) -> list[str]:
    return [new_decision_id() for _ in range(n)]


# one id per call (a next-step) and many of one call (a batch) must look alike
GENERATORS = pytest.mark.parametrize("ids_of", [_singles, new_decision_ids])


@GENERATORS
def test_ids_are_version_7_uuids_as_32_hex_digits(ids_of: Callable[[int], list[str]]) -> None:
    for d in ids_of(1000):
        assert len(d) == 32 and d == d.lower()
        u = uuid.UUID(hex=d)
        assert u.version == 7 and u.variant == uuid.RFC_4122


def test_ids_lead_with_the_clock_and_sort_by_it() -> None:
    before = time.time_ns() // 1_000_000
    first = new_decision_id()
    time.sleep(0.003)
    second = new_decision_id()
    after = time.time_ns() // 1_000_000
    assert before <= int(first[:12], 16) <= int(second[:12], 16) <= after
    assert first < second  # a later millisecond sorts later: inserts append to the index


@GENERATORS
def test_the_random_part_varies_in_every_random_bit(ids_of: Callable[[int], list[str]]) -> None:
    ids = [int(d, 16) for d in ids_of(4000)]
    assert len(set(ids)) == len(ids)
    random_bits = [*range(0, 62), *range(64, 76)]  # rand_b, then rand_a
    for bit in random_bits:  # each of the 74 bits is sometimes 0 and sometimes 1
        ones = sum((i >> bit) & 1 for i in ids)
        assert 1500 < ones < 2500, bit
    fixed = {(i >> 76) & 0xF for i in ids} | {(i >> 62) & 0b11 for i in ids}
    assert fixed == {0x7, 0b10}


def test_a_batch_of_ids_shares_this_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    ids = new_decision_ids(500)
    after = time.time_ns() // 1_000_000
    assert len({d[:12] for d in ids}) == 1 and before <= int(ids[0][:12], 16) <= after
    assert new_decision_ids(0) == []


def test_a_batch_is_the_ids_one_call_each_would_give(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the same clock and the same random bytes, ``new_decision_ids(n)`` is ``n`` calls
    of ``new_decision_id``: each id takes its own 10 bytes, none shared or skipped."""
    import service.ids as ids

    pool = bytes((7 * i + 3) % 256 for i in range(10 * 50))
    monkeypatch.setattr(ids.time, "time_ns", lambda: 1_741_083_072_123_456_789)
    monkeypatch.setattr(ids.os, "urandom", lambda n: pool[:n])
    batch = ids.new_decision_ids(50)
    windows = iter(pool[i : i + 10] for i in range(0, len(pool), 10))
    monkeypatch.setattr(ids.os, "urandom", lambda n: next(windows))
    assert batch == [ids.new_decision_id() for _ in range(50)]
    assert len(set(batch)) == 50 and batch[0][:12] == f"{1_741_083_072_123:012x}"
