"""Service settings, read once from the environment (docs/design.md section 10).

The fields every process shares (``NEXTSTEP_HOME``, the MLflow tracking URI) and what derives
from them come from ``nextstep.settings.NextstepSettings``; this class adds the service's own.

One typed object, built in ``create_app`` (never at import time), so tests construct their own and
nothing reads ``os.environ`` on the hot path. Values that would make the service unsafe or
meaningless (a non-positive body limit, an unknown policy) are refused here, at start-up, rather
than discovered under load.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from models.guardrails import GuardrailSettings
from models.policies import PolicyConfig
from models.registry import DEFAULT_MODEL_URI
from nextstep.settings import NextstepSettings
from service.experiments import parse_exploration

_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


class Settings(NextstepSettings):
    """Everything the service is configured with; env prefix ``NEXTSTEP_``."""

    database_url: str | None = None
    api_keys: SecretStr | None = None
    # Keys for /admin/* only (comma-separated), never accepted on /v1: a product backend's key
    # cannot reload models. With client keys set and no admin keys, /admin/* answers 403.
    admin_keys: SecretStr | None = None
    # The request context keys clients may send (comma-separated). Set, any other key is
    # refused with 422 naming it, so no client can add columns to `export` or features to
    # `retrain`. Unset: any key (up to 32 per request) is accepted.
    context_keys: str | None = None
    model_uri: str = DEFAULT_MODEL_URI
    experiments: Path | None = None
    log_level: str = "INFO"
    catalog: Path | None = None
    policy: str = "planner"
    seed: int = 0
    reload_interval: float = Field(default=0.0, ge=0)
    max_body_bytes: int = Field(default=1 << 20, gt=0)
    idempotency_ttl_hours: float = Field(default=24.0, gt=0)
    # WAL + NORMAL (default): a committed write is in the OS before the response, so it
    # survives a kill -9 of the service (the contract; tests/service/test_crash.py), and the
    # fsync happens at checkpoints, not once per request (~9 ms each on this disk). FULL also
    # survives a power cut, at about one fsync per acknowledged write.
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "NORMAL"
    # Read the SQLite file through a shared memory map of up to this many MiB (0: off). Pages
    # then come from the OS page cache, shared by every connection and worker, instead of
    # each connection's own 2 MiB cache: the history read of a next-step took 50 us on a
    # 290 MB store with the default cache and 23 us mapped.
    sqlite_mmap_mib: int = Field(default=256, ge=0)
    # FastAPI's native OpenTelemetry (traces, metrics, logs through the global OTel providers).
    # Off by default: the service exports Prometheus metrics at /metrics, and with it on FastAPI
    # asks the OTel providers on every request (about 5% of a next-step's time, measured).
    otel: bool = False
    # Planner misses of concurrent next-steps are planned together, at most this many per pass
    # (service/plan_batcher.py): a miss costs ~2.5 ms alone and ~0.5 ms in a pass of 16, with
    # the same answer. 1 plans every miss alone.
    plan_batch_max: int = Field(default=64, ge=1, le=1000)
    # Contact guardrails (models/guardrails.py); none set = only the catalog's per-step rules.
    max_asks_per_period: int | None = Field(default=None, ge=1, le=256)  # ASK_TIMES_KEPT
    period_hours: float | None = Field(default=None, gt=0)
    pause_after_declines: int | None = Field(default=None, ge=1)
    pause_hours: float | None = Field(default=None, ge=0)
    # Exploration on the champion arm when its policy names none (``epsilon=0.05``,
    # ``softmax=0.5`` or ``none``): the logs keep support for every eligible step, so
    # off-policy estimates and retraining see what the policy would not have chosen.
    exploration: str = "epsilon=0.05"
    # The live watch (service/watch.py): resolved offers per arm and step in the calibration
    # window, requests in the context-drift window, and the calibration alert threshold (the
    # shipped Prometheus rule reads it from the nextstep_calibration_threshold gauge).
    watch_window: int = Field(default=200, ge=1, le=100_000)
    drift_window: int = Field(default=1000, ge=10, le=100_000)
    calibration_alert: float = Field(default=0.10, gt=0, le=1)

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        level = v.strip().upper()
        if level not in _LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(_LOG_LEVELS)}")
        return level

    @field_validator("policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        PolicyConfig.parse(v)  # raises ValueError with the known names
        return v.strip()

    @field_validator("exploration")
    @classmethod
    def _exploration(cls, v: str) -> str:
        parse_exploration(v)  # raises ValueError saying what is accepted
        return v.strip().lower()

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip()
        # psycopg 3 is the installed driver; plain postgres URLs would ask for psycopg2.
        for prefix in ("postgresql://", "postgres://"):
            if v.startswith(prefix):
                return "postgresql+psycopg://" + v[len(prefix) :]
        return v

    # -- derived values --------------------------------------------------------------------
    @property
    def db_url(self) -> str:
        """The store URL: ``NEXTSTEP_DATABASE_URL`` or a SQLite file under ``home``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'service.db').resolve()}"

    @property
    def keys(self) -> tuple[bytes, ...]:
        """The accepted API keys as bytes (for ``hmac.compare_digest``); empty = auth off."""
        if self.api_keys is None:
            return ()
        raw = self.api_keys.get_secret_value()
        return tuple(k.strip().encode() for k in raw.split(",") if k.strip())

    @property
    def allowed_context(self) -> frozenset[str] | None:
        """The declared context keys (``NEXTSTEP_CONTEXT_KEYS``); None: any key."""
        if self.context_keys is None or not self.context_keys.strip():
            return None
        return frozenset(k.strip() for k in self.context_keys.split(",") if k.strip())

    @property
    def admin_key_bytes(self) -> tuple[bytes, ...]:
        """The accepted admin keys as bytes; empty = no admin key configured."""
        if self.admin_keys is None:
            return ()
        raw = self.admin_keys.get_secret_value()
        return tuple(k.strip().encode() for k in raw.split(",") if k.strip())

    @property
    def auth_enabled(self) -> bool:
        return bool(self.keys)

    @property
    def admin_guarded(self) -> bool:
        """Whether /admin/* needs a key: any key (client or admin) configured."""
        return bool(self.keys or self.admin_key_bytes)

    @property
    def policy_config(self) -> PolicyConfig:
        return PolicyConfig.parse(self.policy)

    @property
    def default_exploration(self) -> tuple[str, float] | None:
        """``NEXTSTEP_EXPLORATION`` as (kind, value), None for ``none``."""
        return parse_exploration(self.exploration)

    @property
    def guardrails(self) -> GuardrailSettings | None:
        """User-level guardrails for every arm, or None when no guardrail setting is given."""
        values = {
            "max_asks_per_period": self.max_asks_per_period,
            "period_hours": self.period_hours,
            "pause_after_declines": self.pause_after_declines,
            "pause_hours": self.pause_hours,
        }
        given = {k: v for k, v in values.items() if v is not None}
        if not given:
            return None
        return GuardrailSettings(**given)

    @property
    def log_level_number(self) -> int:
        return logging.getLevelName(self.log_level)
