"""Where nextstep keeps its files and which MLflow store it records to: one answer for every
process (the service, the command line, the learner).

Read from the environment by pydantic-settings, so the service and the commands cannot drift
apart on a default or a variable name: ``NEXTSTEP_HOME`` (default ``./.nextstep``; empty counts as
unset) and ``MLFLOW_TRACKING_URI`` (MLflow's own variable; ``NEXTSTEP_MLFLOW_TRACKING_URI`` is
accepted too), whose default is the SQLite file ``mlflow.db`` under the home. The model registry
lives in the tracking store, so the registry URI is the tracking URI.

The service extends this class with its own fields (``service.settings.Settings``); the commands
build it on every call (``training.tracking``), because a test or a notebook may change the
environment between two commands of one process. This module imports no project code: it sits
below every room (the layer contract in pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path("./.nextstep")


class NextstepSettings(BaseSettings):
    """The settings every nextstep process shares; env prefix ``NEXTSTEP_``."""

    model_config = SettingsConfigDict(
        env_prefix="NEXTSTEP_", extra="ignore", populate_by_name=True, frozen=True
    )

    home: Path = DEFAULT_HOME
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "NEXTSTEP_MLFLOW_TRACKING_URI"),
    )

    @field_validator("home", mode="before")
    @classmethod
    def _home(cls, v: Any) -> Any:
        # ``NEXTSTEP_HOME=`` (set but empty, as a compose file or a Makefile may leave it) means
        # the default, not the working directory; ``~`` means the user's home directory.
        if v is None or (isinstance(v, str) and not v.strip()):
            return DEFAULT_HOME
        return Path(v).expanduser()

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _tracking(cls, v: str | None) -> str | None:
        return v if v and v.strip() else None  # empty: the default under the home

    @property
    def default_tracking_uri(self) -> str:
        """The SQLite tracking store under the home (absolute, so a later ``chdir`` keeps it)."""
        return f"sqlite:///{self.home.resolve() / 'mlflow.db'}"

    @property
    def tracking_uri(self) -> str:
        """MLflow's tracking URI: its own variable, else the SQLite file under the home."""
        return self.mlflow_tracking_uri or self.default_tracking_uri

    @property
    def registry_uri(self) -> str:
        """The model registry's URI: the tracking store's (one store holds runs and versions)."""
        return self.tracking_uri

    @property
    def model_cache(self) -> Path:
        """Where downloaded model versions are kept (the service and the commands share it)."""
        return self.home / "model-cache"
