"""``nextstep ui``: the MLflow UI on nextstep's own tracking store.

Opening ``mlflow ui`` in another folder shows an empty ``./mlruns``: the runs live in
``{NEXTSTEP_HOME}/mlflow.db`` (or wherever ``MLFLOW_TRACKING_URI`` points). This runs ``mlflow
server`` on that store, with the artifacts of local runs served from where nextstep wrote them,
one worker and background jobs off (about 0.5 GB instead of several processes).
"""

from __future__ import annotations

import os
import sys

from features.errors import NextstepError
from training import tracking


def ui_args(host: str, port: int) -> list[str]:
    """The ``mlflow server`` command line for the current tracking store."""
    uri = tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        raise NextstepError(
            f"MLFLOW_TRACKING_URI is a tracking server ({uri}): open it in a browser instead"
        )
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def ui_command(host: str = "127.0.0.1", port: int = 5000) -> None:
    """CLI entry point (``nextstep ui``): replaces this process with ``mlflow server``."""
    args = ui_args(host, port)
    print(f"MLflow UI on http://{host}:{port} for {args[args.index('--backend-store-uri') + 1]}")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    sys.stdout.flush()
    os.execve(sys.executable, args, env)
