"""Decision ids that sort by creation time (the layout of a version-7 UUID, as 32 hex digits).

A decision id is the primary key of the decisions table and the unique key of its outcome. A
random id (UUID4) lands each new row on a random leaf of those indexes, so every insert dirties
(and writes to the log) another page: on a store of a few hundred MB a 1,000-decision batch
wrote one page per row and its commit took 31 ms. Ids led by the clock append to the right
edge of the index instead, where the pages are hot and shared by the rows of a commit.

The remaining 74 bits are random (``os.urandom``): an id still cannot be guessed from another,
which matters because an id is what ``POST /v1/outcomes`` is addressed by. The id shows the
millisecond the decision was made, which its response shows anyway.
"""

from __future__ import annotations

import os
import time

_VERSION = 0x7 << 76  # version nibble (bits 76-79 of the 128-bit value)
_VARIANT = 0b10 << 62  # RFC 9562 variant (bits 62-63)
_RAND_B = (1 << 62) - 1  # 62 random bits after the variant


def new_decision_id() -> str:
    """32 lowercase hex digits: 48 bits of Unix milliseconds, version 7, 74 random bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits: 62 for rand_b, the next 12 rand_a
    rand_a = (rand >> 62) & 0xFFF
    value = (ms & ((1 << 48) - 1)) << 80 | _VERSION | rand_a << 64 | _VARIANT | rand & _RAND_B
    return f"{value:032x}"
