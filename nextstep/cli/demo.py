"""``nextstep demo`` (what ``make run`` does): demo data, a champion model, then the service.

Idempotent: ``{NEXTSTEP_HOME}/demo/events.csv`` and ``catalog.yaml`` are simulated only when
missing, a model is trained and promoted only when no ``champion`` alias exists, so a second run
reuses everything and starts serving within seconds. ``demo.json`` records which world and how
many users the data was made from: asking for another world (or size) on an existing home is an
error that says so, never a silent reuse of the old data and model. ``--fresh`` removes what the
demo made under ``NEXTSTEP_HOME`` (``fresh_state``) and starts over.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from features.errors import InputError
from service.run import serve_command
from training import tracking

DEMO_SEED = 7
DEMO_INFO = "demo.json"


class DemoError(InputError):
    """The demo state under NEXTSTEP_HOME does not match what was asked for."""


def state_paths(home: Path) -> list[Path]:
    """What the demo creates under ``home``: its data, and the local MLflow store and service
    store unless ``MLFLOW_TRACKING_URI`` / ``NEXTSTEP_DATABASE_URL`` point elsewhere (those are
    never touched). Only these names are removed, never ``home`` itself."""
    paths = [home / "demo", home / "model-cache"]
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        paths += [home / "mlflow.db", home / "mlflow.db-wal", home / "mlflow.db-shm"]
        paths.append(home / "mlartifacts")
    if not os.environ.get("NEXTSTEP_DATABASE_URL"):
        paths += [home / "service.db", home / "service.db-wal", home / "service.db-shm"]
    return paths


def fresh_state(home: Path) -> list[Path]:
    """Remove the demo's state (``state_paths``); returns what was removed."""
    removed = []
    for p in state_paths(home):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(p)
    return removed


def ensure_demo(world: str, users: int, *, fresh: bool = False) -> tuple[Path, Path, str | None]:
    """``(events, catalog, champion version)``, creating whatever is missing."""
    home = tracking.home()
    if fresh:
        removed = fresh_state(home)
        shown = ", ".join(p.name for p in removed) or "nothing to remove"
        print(f"--fresh: removed from {home}: {shown}")
    folder = home / "demo"
    events, catalog, info = folder / "events.csv", folder / "catalog.yaml", folder / DEMO_INFO
    wanted = {"world": world, "users": users, "seed": DEMO_SEED}
    if events.exists() and catalog.exists():
        made = _read_info(info)
        if made is not None and made != wanted:
            raise DemoError(
                f"the demo data here was made from world {made.get('world')!r} with "
                f"{made.get('users')} users, not world {world!r} with {users}; pass --fresh to "
                "start over (removes the demo data, the local MLflow store and the service "
                "store under NEXTSTEP_HOME)",
                source=str(folder),
            )
    else:
        # start-up: the simulator is imported only when the demo data is missing
        from simulation.simulate import write_simulation
        from simulation.worlds import load_world

        made_info = write_simulation(load_world(world), users, DEMO_SEED, folder)
        info.write_text(json.dumps(wanted), encoding="utf-8")
        print(
            f"simulated {made_info['users']} users of world {made_info['world']}: "
            f"{made_info['rows']} events"
        )
    version = tracking.alias_version(tracking.CHAMPION)  # a local registry: no MLflow import
    if version is None:
        # start-up: the training stack (about 2 s to import) only when there is no model yet
        from nextstep.cli.commands import train_command

        result = train_command(events=events, catalog=catalog, promote=True)
        version = result.version if result.promoted else tracking.alias_version(tracking.CHAMPION)
    else:
        print(
            f"reusing demo data in {folder} and champion model version {version} "
            "(--fresh starts over)"
        )
    return events, catalog, version


def _read_info(path: Path) -> dict | None:
    """What the demo data was made from (None for data made before ``demo.json`` existed)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def demo_command(
    world: str = "ladder",
    users: int = 4000,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    fresh: bool = False,
) -> None:
    """CLI entry point (``nextstep demo``)."""
    _events, catalog, _version = ensure_demo(world, users, fresh=fresh)
    serve_command(catalog=catalog, host=host, port=port, workers=1)
