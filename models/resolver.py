"""Resolving a model reference: registry alias or version, or a local directory, to a local
directory holding the model's files. One module for the service (``service.model_loader``, which
adds the loaded-scorer memo, the alias records and the fallbacks that keep it serving) and the
batch commands (``training.modelio``).

A registry version's artifacts are kept under ``{NEXTSTEP_HOME}/model-cache/{version}/`` (a
model other than ``nextstep``: ``{name}-{version}``), written to a temporary directory and
renamed, so an entry is complete or absent; versions are immutable, so an entry is reused as is.
The marker file ``.nextstep-model.json`` in it says which version it is and where it came from.

MLflow is imported only when the registry must be asked through it (about 1.2 s and 190 MB,
plus about a second to open a SQLite tracking store, which checks its schema with alembic). A
local SQLite registry is read directly (``peek_sqlite_alias``: one read-only query, a few
milliseconds) and a ``file://`` artifact location is copied rather than downloaded through
MLflow. Anything unexpected (another schema, workspaces, a remote artifact store, a locked
database) makes the peek answer "don't know" and MLflow decides.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import tempfile
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.registry import MODEL_NAME

MODEL_MARKER = ".nextstep-model.json"
DEFAULT_NAME = MODEL_NAME
# ``models:/<name>@<alias>`` or ``models:/<name>/<version>``
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))$")
_NO_MODEL = {"", "none", "null", "ladder"}
_DELETED_STAGE = "Deleted_Internal"  # mlflow.entities.model_registry.model_version_stages
_DEFAULT_WORKSPACE = "default"  # mlflow.utils.workspace_utils.DEFAULT_WORKSPACE_NAME
# an MLflow error meaning "no such model or alias", not "the registry cannot be asked"
_NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


@dataclass(frozen=True)
class ModelRef:
    """What an arm asks for: a registry alias or version, a local directory, or no model."""

    kind: str  # "alias" | "version" | "path" | "none"
    name: str = DEFAULT_NAME
    alias: str | None = None
    version: str | None = None
    path: Path | None = None

    @property
    def label(self) -> str:
        if self.kind == "alias":
            return f"models:/{self.name}@{self.alias}"
        if self.kind == "version":
            return f"models:/{self.name}/{self.version}"
        return str(self.path) if self.kind == "path" else "none"


def parse_ref(ref: str | None, default_uri: str) -> ModelRef:
    """``champion``, ``3``, ``models:/nextstep@champion``, ``models:/nextstep/3``, a path, none.

    A bare alias or version number names a version of ``default_uri``'s model; ``~`` in a path
    is the user's home directory."""
    raw = (default_uri if ref is None else str(ref)).strip()
    if raw.lower() in _NO_MODEL:
        return ModelRef("none")
    m = MODEL_URI.match(raw)
    if m:
        if m["alias"]:
            return ModelRef("alias", name=m["name"], alias=m["alias"])
        return ModelRef("version", name=m["name"], version=m["version"])
    if raw.startswith("file://"):
        return ModelRef("path", path=Path(raw[len("file://") :]).expanduser())
    if "/" in raw or os.sep in raw or Path(raw).is_dir():
        return ModelRef("path", path=Path(raw).expanduser())
    base = MODEL_URI.match(default_uri.strip())
    name = base["name"] if base else DEFAULT_NAME
    if raw.isdigit():
        return ModelRef("version", name=name, version=raw)
    return ModelRef("alias", name=name, alias=raw)


def marker_version(path: Path) -> str | None:
    """The registry version a model directory was downloaded as (its marker file), or None."""
    try:
        return str(json.loads((path / MODEL_MARKER).read_text(encoding="utf-8"))["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def meta_version(meta: Mapping[str, Any]) -> str | None:
    """The version a model's meta records (``version``, or ``model_version`` of older bundles)."""
    v = meta.get("version") or meta.get("model_version")
    return None if v is None else str(v)


NO_TAG = ""  # peek_sqlite_tag: the registry was read and the version has no such tag


def peek_sqlite_tag(
    db: Path, name: str, version: str, key: str, *, timeout: float = 0.25
) -> str | None:
    """One model-version tag read straight from an MLflow SQLite registry: its value,
    ``NO_TAG`` when the version has none, None when the database could not be read (ask
    MLflow)."""
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)
    except (sqlite3.Error, ValueError):
        return None
    try:
        row = conn.execute(
            "SELECT value FROM model_version_tags WHERE name = ? AND version = ? AND key = ?",
            (name, int(version), key),
        ).fetchone()
    except (sqlite3.Error, ValueError):
        return None
    finally:
        conn.close()
    return NO_TAG if row is None else str(row[0])


def peek_sqlite_alias(
    db: Path, name: str, alias: str, *, timeout: float = 0.25
) -> tuple[str, str] | None:
    """``(version, artifact location)`` of ``name@alias`` read straight from an MLflow SQLite
    registry, or None for "don't know, ask MLflow".

    Why: opening the registry through MLflow costs about 2.5 s (``import mlflow`` plus the
    store's alembic schema check), most of a cold start; this query costs milliseconds. It
    mirrors ``SqlAlchemyStore.get_model_version_by_alias`` and ``get_model_version_download_uri``
    (alias row -> non-deleted version row -> ``storage_location or source``) and gives up on
    anything it does not fully understand: a missing table or column, workspaces switched on, the
    special ``latest`` alias, a version not READY, no alias at all, or a database locked for
    longer than ``timeout``. ``tests/service/test_startup.py`` checks it against MLflow itself.
    """
    if alias.lower() == "latest" or os.environ.get("MLFLOW_WORKSPACE"):
        return None
    if os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").strip().lower() in ("1", "true", "yes"):
        return None
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)
    except (sqlite3.Error, ValueError):
        return None
    try:
        aliases = {r[1] for r in conn.execute("PRAGMA table_info(registered_model_aliases)")}
        versions = {r[1] for r in conn.execute("PRAGMA table_info(model_versions)")}
        needed = {"name", "version", "current_stage", "status", "source", "storage_location"}
        if not {"name", "alias", "version"} <= aliases or not needed <= versions:
            return None
        ws = "workspace" in aliases or "workspace" in versions
        if ws and not ("workspace" in aliases and "workspace" in versions):
            return None
        sql = (
            "SELECT mv.version, mv.storage_location, mv.source, mv.status "
            "FROM registered_model_aliases a JOIN model_versions mv "
            "ON mv.name = a.name AND mv.version = a.version"
            + (" AND mv.workspace = a.workspace" if ws else "")
            + " WHERE a.name = ? AND a.alias = ? AND mv.current_stage != ?"
            + (" AND a.workspace = ?" if ws else "")
        )
        args = (name, alias, _DELETED_STAGE, *((_DEFAULT_WORKSPACE,) if ws else ()))
        rows = conn.execute(sql, args).fetchall()
    except sqlite3.Error:  # locked, corrupt, not a registry
        return None
    finally:
        conn.close()
    if len(rows) != 1:
        return None
    version, storage_location, source, status = rows[0]
    location = storage_location or source
    if status != "READY" or not location:
        return None
    return str(version), str(location)


def fetch_artifacts(
    src: str, dest: Path, marker: Mapping[str, str], tracking_uri: str | None
) -> None:
    """Put a model version's artifacts at ``dest``, complete or not at all: a plain copy when
    ``src`` is a directory on this machine (no MLflow), else MLflow's download. ``marker``
    (name, version) is written into it as ``.nextstep-model.json``. The service's cache and
    the batch commands' cache both fill through here; two processes racing for the same
    version both succeed (the second finds the first's copy)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=dest.parent))
    try:
        local_dir = local_artifact_dir(src)
        if local_dir is not None:
            local = tmp / (local_dir.name or "artifacts")
            shutil.copytree(local_dir, local)
        else:
            import mlflow.artifacts

            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=src, dst_path=str(tmp), tracking_uri=tracking_uri
                )
            )
        (local / MODEL_MARKER).write_text(json.dumps({**marker, "source": src}), encoding="utf-8")
        try:
            os.replace(local, dest)  # complete or absent, never half-written
        except OSError:
            if not dest.exists():  # not "another process was faster"
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def local_artifact_dir(location: str) -> Path | None:
    """The directory an artifact location names when it is on this machine, else None.

    MLflow's download of a local directory is a copy; doing the copy ourselves avoids importing
    MLflow (and opening its tracking store) for the common local set-up."""
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            return None
        path = Path(urllib.parse.unquote(parsed.path))
    elif parsed.scheme:  # s3://, models:/, runs:/, mlflow-artifacts:/ ...
        return None
    else:
        path = Path(location)
    return path if path.is_absolute() and path.is_dir() else None


class Registry:
    """One model registry as seen from this machine: how an alias is read (directly from a local
    SQLite store, else through MLflow) and where each version's artifacts are cached.

    ``client`` makes an ``MlflowClient`` on ``tracking_uri`` when MLflow must be asked; callers
    pass their own, because the service and the commands set MLflow up differently (retries,
    logging). ``sqlite_fast_path=False`` always goes through MLflow (tests, escape hatch)."""

    def __init__(
        self,
        cache_dir: Path,
        tracking_uri: str,
        *,
        client: Callable[[], Any],
        sqlite_fast_path: bool = True,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.tracking_uri = tracking_uri
        self.client = client
        self.sqlite_fast_path = sqlite_fast_path

    def sqlite_path(self) -> Path | None:
        """The database file of a ``sqlite:///`` tracking store, else None."""
        uri = self.tracking_uri
        return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None

    def exists(self) -> bool:
        """False when the tracking store is a SQLite file that does not exist (nothing trained):
        read-only callers answer "no model" without creating an empty database."""
        db = self.sqlite_path()
        return db.exists() if db is not None else True

    def _direct_db(self) -> Path | None:
        db = self.sqlite_path()
        if not self.sqlite_fast_path or db is None or "?" in str(db):
            return None
        return db

    def peek(self, name: str, alias: str) -> tuple[str, str] | None:
        """``(version, location)`` of ``name@alias`` straight from a local SQLite registry, or
        None (ask MLflow)."""
        db = self._direct_db()
        return None if db is None else peek_sqlite_alias(db, name, alias)

    def peek_tag(self, name: str, version: str, key: str) -> str | None:
        """A version's tag straight from a local SQLite registry (``NO_TAG``: none), or None
        (ask MLflow)."""
        db = self._direct_db()
        return None if db is None else peek_sqlite_tag(db, name, version, key)

    def mlflow_version(self, name: str, alias: str) -> str | None:
        """The alias's version through MLflow; None when the registry says there is no such
        alias or model. Raises when the registry cannot be asked."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client().get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") in _NOT_FOUND_CODES:
                return None
            raise
        return str(mv.version)

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version ``name@alias`` points at now; None when there is no registry or no such
        alias. Raises when the registry cannot be asked."""
        if not self.exists():
            return None
        hint = self.peek(name, alias)
        return hint[0] if hint is not None else self.mlflow_version(name, alias)

    def version_dir(self, name: str, version: str) -> Path:
        """Where version ``version`` of model ``name`` is (or would be) cached."""
        leaf = version if name == DEFAULT_NAME else f"{name}-{version}"
        return self.cache_dir / leaf

    def cached_versions(self, name: str) -> list[str]:
        """The versions of model ``name`` in the cache (complete entries: renamed into place)."""
        if not self.cache_dir.exists():
            return []
        prefix = "" if name == DEFAULT_NAME else f"{name}-"
        return [
            p.name[len(prefix) :]
            for p in self.cache_dir.iterdir()
            if p.is_dir() and p.name.startswith(prefix) and p.name[len(prefix) :].isdigit()
        ]

    def download_uri(self, name: str, version: str) -> str:
        """Where the registry keeps a version's artifacts (through MLflow)."""
        return str(self.client().get_model_version_download_uri(name, version))

    def download(self, name: str, version: str, dest: Path, location: str | None = None) -> None:
        """Put a version's artifacts at ``dest`` (``location``: where they are, when a peek
        already said)."""
        src = location or self.download_uri(name, version)
        fetch_artifacts(src, dest, {"name": name, "version": version}, self.tracking_uri)
