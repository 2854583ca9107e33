"""Decision ids: UUID version 7 layout, ordered by creation time, unguessable in the rest."""

from __future__ import annotations

import time
import uuid

from service.ids import new_decision_id


def test_ids_are_version_7_uuids_as_32_hex_digits() -> None:
    for _ in range(1000):
        d = new_decision_id()
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


def test_the_random_part_varies_in_every_random_bit() -> None:
    ids = [int(new_decision_id(), 16) for _ in range(4000)]
    assert len(set(ids)) == len(ids)
    random_bits = [*range(0, 62), *range(64, 76)]  # rand_b, then rand_a
    for bit in random_bits:  # each of the 74 bits is sometimes 0 and sometimes 1
        ones = sum((i >> bit) & 1 for i in ids)
        assert 1500 < ones < 2500, bit
    fixed = {(i >> 76) & 0xF for i in ids} | {(i >> 62) & 0b11 for i in ids}
    assert fixed == {0x7, 0b10}
