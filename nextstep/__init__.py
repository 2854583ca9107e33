"""nextstep: the installed distribution's version, and ``python -m nextstep`` (the same command
line as the ``nextstep`` script). The code lives in ``features``, ``models``, ``training`` and
``service``."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nextstep")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown"

__all__ = ["__version__"]
