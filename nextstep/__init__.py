"""nextstep: the installed distribution's version, ``python -m nextstep`` (the same command
line as the ``nextstep`` script), the command line itself (``nextstep.cli``, the top layer) and
the settings every process shares (``nextstep.settings``, the bottom one). The rest of the code
lives in one top-level package per room (docs/design.md, "Layout")."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nextstep")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown"

__all__ = ["__version__"]
