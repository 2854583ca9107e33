"""``nextstep retrain``: export the service's log, train on it, gate, promote — one step.

1. ``loop.export`` writes the store's decisions and outcomes as an event log (a temporary
   Parquet file; the default no-response rule, ``ignore``);
2. ``nextstep.cli.commands.train_command`` fits, evaluates and registers a new version with
   ``promote=True``: the log-loss gate (with ``tolerance``) moves alias ``champion`` or refuses;
3. the gate's decision is printed. A running service picks the new champion up with
   ``POST /admin/reload`` or by itself when ``NEXTSTEP_RELOAD_INTERVAL`` is set.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from features.errors import NextstepError
from loop.export import export_command
from nextstep.cli.commands import train_command


def retrain_command(
    catalog: Path,
    since: str | None = None,
    tolerance: float = 0.0,
    *,
    wait_hours: float = 72.0,
    no_response: str = "ignore",
):  # type: ignore[no-untyped-def]
    """CLI entry point; returns the ``TrainResult``."""
    with tempfile.TemporaryDirectory(prefix="nextstep-retrain-") as tmp:
        events = Path(tmp) / "export.parquet"
        exported = export_command(
            events, since=since, catalog=catalog, wait_hours=wait_hours, no_response=no_response
        )
        if exported.log.n_rows == 0:
            raise NextstepError("the service's store has no outcomes to train on yet")
        result = train_command(events, catalog, promote=True, tolerance=tolerance)
    verdict = "promoted to champion" if result.promoted else "not promoted"
    print(f"retrain: version {result.version} {verdict} ({result.decision}: {result.reason})")
    if result.promoted:
        print("the service picks it up on POST /admin/reload or with NEXTSTEP_RELOAD_INTERVAL")
    return result
