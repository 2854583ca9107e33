"""``nextstep validate``: check a catalog and an event log against the contract.

A data scientist runs this before training to learn, in one screen, whether the files are
usable and what is in them. Errors are ``InputError`` subclasses and propagate: the CLI prints
them as one line and exits with code 2.
"""

from __future__ import annotations

from pathlib import Path

from features.catalog import load_catalog
from features.events import OUTCOMES, EventLog, format_ts, load_events


def validate_command(events: Path, catalog: Path, skip_invalid: bool) -> None:
    """Load both files (raising on the first problem unless ``skip_invalid``) and print a
    summary: rows, users, time range, outcomes, skipped rows by reason."""
    from rich.console import Console

    cat = load_catalog(catalog)
    log = load_events(events, cat, skip_invalid=skip_invalid)
    console = Console(highlight=False, soft_wrap=True)
    for line in summary_lines(log, catalog_source=str(catalog), n_steps=len(cat)):
        console.print(line, markup=False)


def summary_lines(log: EventLog, *, catalog_source: str, n_steps: int) -> list[str]:
    """The summary as plain lines (kept separate so notebooks and tests can use it)."""
    df = log.frame
    n = len(df)
    counts = df["outcome"].value_counts()
    first, last = format_ts(df["ts"].agg(["min", "max"]).to_numpy())
    outcomes = ", ".join(
        f"{o} {int(counts.get(o, 0))} ({100 * counts.get(o, 0) / n:.1f}%)" for o in OUTCOMES
    )
    with_prop = int(df["propensity"].notna().sum())
    lines = [
        f"catalog: {catalog_source} ({n_steps} steps)",
        f"events:  {log.source}",
        f"rows:    {n}",
        f"users:   {df['user_id'].nunique()}",
        f"time:    {first} .. {last}",
        f"outcomes: {outcomes}",
        f"propensity: {with_prop} of {n} rows",
        f"context: {', '.join(log.context_columns) or 'none'}",
    ]
    if log.n_skipped:
        detail = ", ".join(f"{reason} {count}" for reason, count in log.skipped.items())
        lines.append(f"skipped: {log.n_skipped} ({detail})")
    else:
        lines.append("skipped: 0")
    lines.append("ok")
    return lines
