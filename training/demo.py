"""``nextstep demo`` (what ``make run`` does): demo data, a champion model, then the service.

Idempotent: ``{NEXTSTEP_HOME}/demo/events.csv`` and ``catalog.yaml`` are simulated only when
missing, a model is trained and promoted only when no ``champion`` alias exists, so a second run
reuses everything and starts serving within seconds.
"""

from __future__ import annotations

from pathlib import Path

DEMO_SEED = 7


def ensure_demo(world: str, users: int) -> tuple[Path, Path, str | None]:
    """``(events, catalog, champion version)``, creating whatever is missing."""
    from training import tracking

    folder = tracking.home() / "demo"
    events, catalog = folder / "events.csv", folder / "catalog.yaml"
    if not (events.exists() and catalog.exists()):
        from training.simulate import write_simulation
        from training.worlds import load_world

        info = write_simulation(load_world(world), users, DEMO_SEED, folder)
        print(f"simulated {info['users']} users of world {info['world']}: {info['rows']} events")
    from training.modelio import alias_version  # no MLflow import for the local registry

    version = alias_version(tracking.CHAMPION)
    if version is None:
        from training.pipeline import train_command

        result = train_command(events=events, catalog=catalog, promote=True)
        version = result.version if result.promoted else tracking.alias_version(tracking.CHAMPION)
    else:
        print(f"reusing demo data in {folder} and champion model version {version}")
    return events, catalog, version


def demo_command(
    world: str = "ladder", users: int = 4000, host: str = "127.0.0.1", port: int = 8000
) -> None:
    """CLI entry point (``nextstep demo``)."""
    _events, catalog, _version = ensure_demo(world, users)
    from service.run import serve_command

    serve_command(catalog=catalog, host=host, port=port, workers=1)
