"""The range of timestamps nextstep accepts, offline and online alike.

An event log or a request dated in year 9999 (or before 1970) is a unit or parsing mistake, not
an event: epoch milliseconds read as seconds land in year 57000, a swapped date field in year
0202. Refusing them at the door keeps time features (time since the last outcome, gaps between
visits) meaningful. The range is "a date in the years 1970 to 2099 in any UTC offset", so it is
widened by a day on both sides; one pair of constants, so the CLI, ``nextstep export`` and the
API refuse the same things (a request the service stored always exports).
"""

from __future__ import annotations

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
