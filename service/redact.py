"""Keep credentials and raw exception text out of what the open routes and the logs show.

``/readyz`` is open even when API keys are set, and its notes quote model sources and registry
URIs; a tracking URI such as ``http://user:password@host`` or a database URL would otherwise be
published verbatim. Every note, error and log line that may hold a URL goes through ``redact``,
and errors of unknown origin are shown by type only (``public_error``): their text may quote a
connection string, a file path or a payload.
"""

from __future__ import annotations

import logging
import re

from features.errors import NextstepError

# scheme://user:password@host, scheme://token@host: the user-info part goes
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@'\"]*@")
# ?password=..., &token=..., api_key=... in query strings and DSNs
_SECRET_PARAM = re.compile(
    r"(?P<name>\b(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)=)[^&\s'\"]*",
    re.IGNORECASE,
)
REDACTED = "***"


def redact(text: str) -> str:
    """``text`` with URL credentials and secret query parameters replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['name']}{REDACTED}", text)


def public_error(exc: BaseException, limit: int = 300) -> str:
    """What an open route may say about ``exc``: the service's own message (redacted, bounded)
    for a ``NextstepError``, only the type's name for anything else."""
    if isinstance(exc, NextstepError):
        return redact(str(exc))[:limit]
    return f"{type(exc).__name__} (details in the server log)"


class RedactingFilter(logging.Filter):
    """A log filter that redacts every record's formatted message (installed on the service's
    handlers by ``service.run.log_config``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True
