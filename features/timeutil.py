"""Time, one rule for the event log, the CLI and the API: the range of timestamps nextstep
accepts, parsing a timestamp (ISO-8601 with or without an offset, naive meaning UTC, or epoch
seconds; UTC inside) and writing one back as ISO-8601 UTC.

An event log or a request dated in year 9999 (or before 1970) is a unit or parsing mistake, not
an event: epoch milliseconds read as seconds land in year 57000, a swapped date field in year
0202. Refusing them at the door keeps time features (time since the last outcome, gaps between
visits) meaningful. The range is "a date in the years 1970 to 2099 in any UTC offset", so it is
widened by a day on both sides; one pair of constants, so the CLI, ``nextstep export`` and the
API refuse the same things (a request the service stored always exports).

A request's ``ts`` is "now" for that decision (docs/design.md §7), so it is parsed exactly and
stored as float epoch seconds; responses render it back with ``iso``. Event logs are parsed
column-wise by ``features.events`` with the same rule.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

#: 1969-12-31T00:00:00Z and 2100-01-02T00:00:00Z in epoch seconds (both accepted).
TS_MIN = -86400.0
TS_MAX = 4102531200.0
TS_RANGE_TEXT = "1969-12-31T00:00:00Z .. 2100-01-02T00:00:00Z"
#: A JSON-schema pattern for RFC 3339 date-times inside the range: the years 1970 to 2099.
TS_ISO_PATTERN = (
    r"^(19[7-9][0-9]|20[0-9][0-9])-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
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
    if not math.isfinite(ts) or not TS_MIN <= ts <= TS_MAX:
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


def iso_seconds(ts: float) -> str:
    """ISO-8601 UTC to the whole second (``2024-05-01T12:00:00Z``): for summaries and records
    (a log's time range, when a model was trained), where fractions of a second are noise."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
