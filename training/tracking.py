"""MLflow set-up shared by every command that records something (docs/design.md section 8).

``import mlflow`` costs about 1.2 s and 190 MB, so this module imports it only inside functions:
importing ``training.tracking`` itself is cheap. Conventions, in one place:

* tracking URI: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///{NEXTSTEP_HOME}/mlflow.db``
  (``nextstep.settings.NextstepSettings``, the class the service's settings extend, read anew on
  every call so a change of the environment between two commands is seen);
* artifacts of experiments created here: ``{NEXTSTEP_HOME}/mlartifacts/<experiment>`` when the
  tracking store is that local default (a remote server keeps its own artifact root);
* one experiment per purpose (``nextstep-train``, ``nextstep-compare``, ``nextstep-online``,
  ``nextstep-learn``);
* one registered model, ``nextstep``, with aliases ``champion`` and ``challenger`` (no stages).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from features.errors import NextstepError

# the registry's names (models.registry), also read here as tracking.CHAMPION and so on
from models.registry import CHALLENGER, CHAMPION, DEFAULT_MODEL_URI, MODEL_NAME  # noqa: F401
from models.resolver import Registry
from nextstep.settings import NextstepSettings

EXPERIMENT_TRAIN = "nextstep-train"
EXPERIMENT_COMPARE = "nextstep-compare"
EXPERIMENT_ONLINE = "nextstep-online"
EXPERIMENT_LEARN = "nextstep-learn"  # one run per cycle of ``nextstep learn``

_EXPORTED = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
_QUIET_LOGGERS = ("mlflow", "alembic", "alembic.runtime.migration", "urllib3", "git")


class TrackingError(NextstepError):
    """The tracking store or the model registry cannot do what was asked."""


def home() -> Path:
    """``NEXTSTEP_HOME`` (default ``./.nextstep``), created if missing, as an absolute path."""
    return _made_home(NextstepSettings())


def _made_home(settings: NextstepSettings) -> Path:
    p = settings.home.resolve()
    p.mkdir(parents=True, exist_ok=True)
    return p


def tracking_uri() -> str:
    """MLflow's own variable wins; else the SQLite file under ``NEXTSTEP_HOME`` (created)."""
    settings = NextstepSettings()
    if settings.mlflow_tracking_uri is None:
        _made_home(settings)  # SQLite creates the file, not its folder
    return settings.tracking_uri


def is_local_default() -> bool:
    """True when tracking uses the default SQLite file under ``NEXTSTEP_HOME``.

    Compared by value: ``mlflow.set_tracking_uri`` itself exports ``MLFLOW_TRACKING_URI``.
    """
    settings = NextstepSettings()
    return settings.tracking_uri == settings.default_tracking_uri


def registry() -> Registry:
    """The model registry on ``tracking_uri()`` with its cache under ``NEXTSTEP_HOME`` (read
    now); MLflow, when it must be asked, through ``client()``."""
    return Registry(home() / "model-cache", tracking_uri(), client=client)


def registry_exists() -> bool:
    """False when the tracking store is a SQLite file that does not exist yet (nothing logged).

    Lets read-only callers (``predict``, ``demo``) answer "no model" without creating an empty
    database and paying for its schema migrations.
    """
    return registry().exists()


def quiet_mlflow() -> None:
    """Silence MLflow's INFO chatter, alembic's migration log and known harmless warnings."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for pattern in (
        r".*[Ff]ilesystem tracking backend.*",
        r".*Hint: Inferred schema contains integer column.*",
        r".*artifact_path.* is deprecated.*",
        r".*Add type hints to the `predict` method.*",
        r".*pkg_resources is deprecated.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"mlflow(\..*)?")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\..*)?")


def setup() -> Any:
    """Import MLflow, point it at our tracking/registry URI and return the ``mlflow`` module."""
    quiet_mlflow()
    import mlflow

    uri = tracking_uri()
    before = {k: os.environ.get(k) for k in _EXPORTED}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # MLflow exports both URIs to the environment; undo that so NEXTSTEP_HOME keeps deciding
    # (a later call with another NEXTSTEP_HOME, e.g. in tests, must not inherit the old URI).
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    quiet_mlflow()  # mlflow configures its own loggers on import
    return mlflow


def client() -> Any:
    """An ``MlflowClient`` on our tracking and registry URI."""
    setup()
    from mlflow import MlflowClient

    uri = tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(name: str) -> str:
    """The id of experiment ``name``, created (with its artifact location) when missing."""
    mlflow = setup()
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise TrackingError(
                f"MLflow experiment {name!r} is deleted; restore it or choose another name"
            )
        return str(exp.experiment_id)
    location = None
    if is_local_default():
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        location = (home() / "mlartifacts" / safe).as_uri()
    try:
        return str(mlflow.create_experiment(name, artifact_location=location))
    except Exception:  # created concurrently by another process: use theirs
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)


def alias_version(alias: str, name: str = MODEL_NAME) -> str | None:
    """The version an alias points at, or None (no registry, no model, no such alias). A local
    SQLite registry is read directly, without importing MLflow (``nextstep demo`` asks this just
    before serving, where MLflow would cost about 2.5 s and 190 MB the service never needs)."""
    return registry().alias_version(name, alias)


def set_alias(alias: str, version: str, name: str = MODEL_NAME) -> None:
    client().set_registered_model_alias(name, alias, str(version))


def delete_alias(alias: str, name: str = MODEL_NAME) -> None:
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):
        client().delete_registered_model_alias(name, alias)
