"""Unknown-key checks with "did you mean" for the hand-written files (catalog, experiments,
worlds), and one-line YAML syntax errors.

A misspelt key is the worst kind of input error because nothing fails: ``require: [intro]``
parses, the real ``requires`` defaults to empty, and the prerequisite silently disappears. So a
key that is not known but is a close match of a known one is always an error; files whose
contract keeps extra keys (the catalog) let every other key through, files with a closed set of
keys refuse them all.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

#: How alike a key must be to a known one to count as a typo of it (``difflib`` ratio): high
#: enough that ``title`` or ``tags`` are not taken for ``value`` or ``stage``.
TYPO_CUTOFF = 0.8


def close_match(key: str, known: Iterable[str]) -> str | None:
    """The known key that ``key`` is most likely a misspelling of, or None.

    Case is ignored first (``Requires`` is ``requires``), then ``difflib`` decides.
    """
    names = sorted(known)
    lowered = {k.lower(): k for k in names}
    if key.lower() in lowered:
        return lowered[key.lower()]
    found = difflib.get_close_matches(key, names, n=1, cutoff=TYPO_CUTOFF)
    return found[0] if found else None


def unknown_key_message(key: str, known: Iterable[str]) -> str:
    """``unknown key 'x'; did you mean 'y'?`` (or the list of known keys when nothing is close)."""
    names = sorted(known)
    hint = close_match(key, names)
    if hint is not None:
        return f"unknown key {key!r}; did you mean {hint!r}?"
    return f"unknown key {key!r} (known: {', '.join(names)})"


def first_unknown(keys: Iterable[Any], known: Iterable[str]) -> str | None:
    """The first key (in file order) that is not in ``known``."""
    allowed = set(known)
    for k in keys:
        if str(k) not in allowed:
            return str(k)
    return None


def first_typo(keys: Iterable[Any], known: Iterable[str]) -> tuple[str, str] | None:
    """The first unknown key that looks like a misspelling of a known one, with that one."""
    allowed = set(known)
    for k in keys:
        name = str(k)
        if name in allowed:
            continue
        hint = close_match(name, allowed)
        if hint is not None:
            return name, hint
    return None


def yaml_error_line(exc: Exception) -> str:
    """A YAML parser error as one line: ``line L, column C: problem`` (PyYAML's own message
    spans several lines with a copy of the offending text)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    text = " ".join(str(problem or exc).split())
    if mark is None:
        return text
    return f"line {mark.line + 1}, column {mark.column + 1}: {text}"
