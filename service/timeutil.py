"""Request timestamps: ISO-8601 (offsets allowed, naive means UTC) or epoch seconds, UTC inside.

A request's ``ts`` is "now" for that decision (docs/design.md §7), so it is parsed exactly and
stored as float epoch seconds; responses render it back as ISO-8601 UTC.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

from features.timerange import TS_MAX, TS_MIN, TS_RANGE_TEXT

# The same range as an event log (features.timerange): the years 1970..2099 in any UTC offset. A
# request dated outside it is a unit or parsing mistake, refused with 422.
MIN_TS = TS_MIN
MAX_TS = TS_MAX
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_LEAP = re.compile(r"^(.*[T ]\d\d:\d\d:)60(.*)$")


def parse_ts(value: object) -> float:
    """Epoch seconds from an ISO-8601 string or a number; ``ValueError`` with a reason otherwise."""
    if isinstance(value, bool):
        raise ValueError("ts must be an ISO-8601 string or epoch seconds, not a boolean")
    if isinstance(value, int | float):
        ts = float(value)
    elif isinstance(value, str):
        text = value.strip()
        ts = float(text) if _NUMBER.match(text) else _parse_iso(text)
    else:
        raise ValueError("ts must be an ISO-8601 string or epoch seconds")
    if not math.isfinite(ts) or not MIN_TS <= ts <= MAX_TS:
        raise ValueError(f"ts is outside {TS_RANGE_TEXT}")
    return ts


def _parse_iso(text: str) -> float:
    if not text or len(text) > 64:
        raise ValueError("ts is not an ISO-8601 timestamp")
    text = text.upper() if "t" in text or "z" in text else text
    extra = 0.0
    leap = _LEAP.match(text)
    if leap:  # RFC 3339 leap second: 23:59:60 is one second after 23:59:59
        text = f"{leap.group(1)}59{leap.group(2)}"
        extra = 1.0
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("ts is not an ISO-8601 timestamp") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH).total_seconds() + extra


def iso(ts: float) -> str:
    """ISO-8601 UTC (``...Z``) for epoch seconds, clamped to what a datetime can show."""
    try:
        dt = _EPOCH + timedelta(seconds=ts)
    except OverflowError:
        dt = datetime.min.replace(tzinfo=UTC) if ts < 0 else datetime.max.replace(tzinfo=UTC)
    return dt.isoformat().replace("+00:00", "Z")
