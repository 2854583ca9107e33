"""Validation errors for the data contract.

One exception type per failure kind, each carrying *where* the problem is (file, row, column or
step and field), so the CLI can print one helpful line and exit 2 and the service can map it to a
problem+json response, without either of them parsing messages.
"""

from __future__ import annotations


class NextstepError(Exception):
    """Base class of every error nextstep raises on purpose (never a bug)."""


class InputError(NextstepError, ValueError):
    """Bad input data: the message says what is wrong and where."""

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        row: int | None = None,
        column: str | None = None,
        step: str | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.row = row
        self.column = column
        self.step = step
        self.field = field
        super().__init__(self.render())

    def render(self) -> str:
        where: list[str] = []
        if self.source:
            where.append(str(self.source))
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        if self.step is not None:
            where.append(f"step {self.step!r}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class CatalogError(InputError):
    """The catalog is malformed (duplicate ids, bad stage/effort, unknown or cyclic requires...)."""


class EventLogError(InputError):
    """The event log is malformed (missing column, unknown step/outcome, bad ts/propensity...)."""
