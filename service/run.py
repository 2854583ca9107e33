"""``nextstep serve``: run the app under uvicorn.

The app is built by uvicorn's factory hook (``service.app:app_from_env``) in each worker, so
settings travel through the environment (``NEXTSTEP_CATALOG`` carries ``--catalog``). Without API
keys the service is meant for loopback only: binding anywhere else works but prints a warning.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from pathlib import Path

from service.settings import Settings

log = logging.getLogger("nextstep.service")


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve_command(catalog: Path | str, host: str, port: int, workers: int = 1) -> None:
    """Validate the settings and the catalog here (a clear error, exit 2), then run uvicorn."""
    import uvicorn

    from features.catalog import load_catalog

    os.environ["NEXTSTEP_CATALOG"] = str(Path(catalog).resolve())
    settings = Settings()
    load_catalog(settings.catalog)  # fail fast with the catalog's own message
    logging.basicConfig(
        level=settings.log_level_number, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not settings.auth_enabled and not is_loopback(host):
        print(
            f"warning: binding {host}:{port} without NEXTSTEP_API_KEYS: anyone who can reach "
            "this address can read and write decisions. Set NEXTSTEP_API_KEYS or bind 127.0.0.1.",
            file=sys.stderr,
        )
    uvicorn.run(
        "service.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level.lower(),
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
