"""``nextstep serve``: run the app under uvicorn.

The app is built by uvicorn's factory hook (``service.app:app_from_env``) in each worker, so
settings travel through the environment (``NEXTSTEP_CATALOG`` carries ``--catalog``). Without API
keys the service is meant for loopback only: binding anywhere else is refused unless the operator
says ``--insecure`` (then it warns), so a forgotten variable never opens the API to a network.
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from features.catalog import load_catalog
from features.errors import NextstepError
from service.redact import RedactingFilter
from service.settings import Settings

log = logging.getLogger("nextstep.service")


class InsecureBind(NextstepError):
    """A non-loopback bind without API keys, and no ``--insecure``."""


class SettingsError(NextstepError):
    """A ``NEXTSTEP_*`` variable holds a value the service refuses."""


def load_settings() -> Settings:
    """``Settings()`` from the environment; a refused value is a ``SettingsError`` naming the
    variable and what it accepts (the CLI prints it and exits 2), not a validation traceback."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            name = f"NEXTSTEP_{field.upper()}" if field else "NEXTSTEP_*"
            msg = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{name}={err.get('input')!r}: {msg}")
        raise SettingsError("; ".join(problems)) from None


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging configuration plus a handler for the ``nextstep`` loggers.

    uvicorn applies this dictionary in every worker process it starts; with ``--workers`` 2 or
    more the workers are fresh interpreters, so the ``basicConfig`` above never reaches them,
    and without a handler of their own the service's INFO lines (model swaps, reloads, pruned
    keys) were dropped.
    """
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["nextstep"] = {"format": LOG_FORMAT}
    # every handler redacts URL credentials from the lines it writes (service.redact)
    config.setdefault("filters", {})["redact"] = {"()": RedactingFilter}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact")
    config["handlers"]["nextstep"] = {
        "class": "logging.StreamHandler",
        "formatter": "nextstep",
        "stream": "ext://sys.stderr",
        "filters": ["redact"],
    }
    config["loggers"]["nextstep"] = {
        "handlers": ["nextstep"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


def serve_command(
    catalog: Path | str, host: str, port: int, workers: int = 1, *, insecure: bool = False
) -> None:
    """Validate the settings and the catalog here (a clear error, exit 2), then run uvicorn.

    A non-loopback ``host`` without ``NEXTSTEP_API_KEYS`` raises ``InsecureBind`` unless
    ``insecure`` (the CLI's ``--insecure``) is given."""
    import uvicorn

    os.environ["NEXTSTEP_CATALOG"] = str(Path(catalog).resolve())
    settings = load_settings()
    load_catalog(settings.catalog)  # fail fast with the catalog's own message
    logging.basicConfig(level=settings.log_level_number, format=LOG_FORMAT)
    if not settings.auth_enabled and not is_loopback(host):
        if not insecure:
            raise InsecureBind(
                f"refusing to bind {host}:{port} without NEXTSTEP_API_KEYS: anyone who can "
                "reach this address could read and write decisions. Set NEXTSTEP_API_KEYS, "
                "bind 127.0.0.1, or pass --insecure to accept the risk."
            )
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
        log_config=log_config(settings.log_level),
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
