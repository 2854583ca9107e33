"""Model resolution: registry alias -> version -> local cache -> loaded scorer.

The only module that talks to MLflow, and it imports MLflow lazily (about 1.2 s and 190 MB, plus
about a second to open a SQLite tracking store, which checks its schema with alembic): a service
with no registry never pays for it and the hot path never touches it. Every version ever served
is kept under ``{home}/model-cache/{version}/`` (written to a temporary directory and renamed, so
a cache entry is complete or absent) and ``aliases.json`` remembers which version each alias last
pointed at, and in which registry, so an unreachable registry degrades to "serve the cached
champion" rather than "serve nothing". A model that cannot be loaded is refused with a message
saying why; the caller decides what keeps serving.

Start-up is kept short (``nextstep serve`` to ``/readyz`` in about 3 s, most of it importing
FastAPI, scikit-learn and LightGBM) in two ways:

* a local SQLite registry is read directly (``peek_sqlite_alias``: one read-only query, a few
  milliseconds) instead of through MLflow, and a ``file://`` artifact location is copied rather
  than downloaded through MLflow. Anything unexpected (another schema, workspaces, a remote
  artifact store, a locked database) makes the peek answer "don't know" and MLflow decides;
* when even that is not possible (a tracking server, a locked database), ``resolve(...,
  prefer_cache=True)`` serves the version this alias last resolved to *in this registry* from the
  cache and marks it ``unconfirmed``; the runtime then asks the registry in the background and
  swaps if the champion moved while the service was down.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from features.catalog import Catalog
from features.errors import NextstepError
from models.bundle import ModelLoadError
from models.registry import MODEL_NAME
from models.serving import DIGEST_TAG, load_serving_dir, serving_directory, verify_serving
from service.redact import redact

MODEL_MARKER = ".nextstep-model.json"
log = logging.getLogger("nextstep.service.model")
DEFAULT_NAME = MODEL_NAME
# ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` (``training.modelio`` reads it too)
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))$")
_NO_MODEL = {"", "none", "null", "ladder"}
_DELETED_STAGE = "Deleted_Internal"  # mlflow.entities.model_registry.model_version_stages
_DEFAULT_WORKSPACE = "default"  # mlflow.utils.workspace_utils.DEFAULT_WORKSPACE_NAME


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
    """``champion``, ``3``, ``models:/nextstep@champion``, ``models:/nextstep/3``, a path, none."""
    raw = (default_uri if ref is None else str(ref)).strip()
    if raw.lower() in _NO_MODEL:
        return ModelRef("none")
    m = MODEL_URI.match(raw)
    if m:
        if m["alias"]:
            return ModelRef("alias", name=m["name"], alias=m["alias"])
        return ModelRef("version", name=m["name"], version=m["version"])
    if raw.startswith("file://"):
        return ModelRef("path", path=Path(raw[len("file://") :]))
    if "/" in raw or os.sep in raw or Path(raw).is_dir():
        return ModelRef("path", path=Path(raw))
    base = MODEL_URI.match(default_uri.strip())
    name = base["name"] if base else DEFAULT_NAME
    if raw.isdigit():
        return ModelRef("version", name=name, version=raw)
    return ModelRef("alias", name=name, alias=raw)


@dataclass(frozen=True)
class LoadedModel:
    version: str
    scorer: Any
    meta: Mapping[str, Any]
    source: str  # "registry" | "cache" | "path"
    uri: str


@dataclass
class Resolution:
    """The outcome of resolving one reference: a model (or none) and a note for /readyz."""

    model: LoadedModel | None
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # served from the cache without asking the registry: ask it later (see Runtime.confirm)
    unconfirmed: bool = False


BundleLoader = Callable[[Path, Catalog], tuple[Any, Mapping[str, Any]]]


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


def _default_bundle_loader(path: Path, catalog: Catalog) -> tuple[Any, Mapping[str, Any]]:
    # the serving artifact: no scikit-learn, pandas or SciPy imports
    return load_serving_dir(path, catalog)


class ModelLoader:
    """Resolves references against the registry, keeps the cache, remembers loaded scorers."""

    def __init__(
        self,
        home: Path,
        tracking_uri: str,
        catalog: Catalog,
        *,
        bundle_loader: BundleLoader | None = None,
        sqlite_fast_path: bool = True,
    ) -> None:
        self.cache_dir = Path(home) / "model-cache"
        self.tracking_uri = tracking_uri
        self.catalog = catalog
        self.bundle_loader = bundle_loader or _default_bundle_loader
        # False: always go through MLflow, even for a local SQLite registry (tests, escape hatch)
        self.sqlite_fast_path = sqlite_fast_path
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    # -- public ----------------------------------------------------------------------------
    def resolve(self, ref: ModelRef, *, prefer_cache: bool = False) -> Resolution:
        """Load the model ``ref`` names now. Raises ``ModelLoadError`` for a broken model.

        ``prefer_cache`` (start-up): when the registry cannot be read cheaply, serve the version
        this alias last resolved to in this registry from the cache, without waiting for the
        registry, and mark the resolution ``unconfirmed``."""
        with self._lock:
            if ref.kind == "none":
                return Resolution(None, "no model configured: serving ladder")
            if ref.kind == "path":
                return Resolution(self._load_path(ref))
            return self._resolve_registry(ref, prefer_cache=prefer_cache)

    def registry_version(self, ref: ModelRef) -> str | None:
        """The version ``ref`` points at in the registry now; None when the registry has no such
        alias (or there is no registry). Raises when the registry cannot be asked."""
        if ref.kind == "version":
            return ref.version
        if ref.kind != "alias" or not self._registry_exists():
            return None
        hint = self._peek(ref)
        if hint is not None:
            return hint[0]
        return self._registry_version(ref)

    def current_version(self, ref: ModelRef) -> str | None:
        """The version ``ref`` points at in the registry now (None if unknown): for polling."""
        try:
            return self.registry_version(ref)
        except Exception:
            return None

    def retain(self, uris: set[str]) -> int:
        """Forget every loaded model whose URI is not in ``uris`` (the ones the arms serve now),
        so a worker's memory holds the models in use, not every version it ever loaded.
        Returns how many were dropped."""
        with self._lock:
            stale = [k for k, m in self._loaded.items() if m.uri not in uris]
            for k in stale:
                del self._loaded[k]
        return len(stale)

    def confirmed(self, ref: ModelRef, version: str) -> None:
        """The registry agrees that ``ref`` is ``version``: remember it as resolved there."""
        self._remember_alias(ref, version)

    # -- registry --------------------------------------------------------------------------
    def _registry_exists(self) -> bool:
        """False when the tracking store is a SQLite file that does not exist (nothing trained)."""
        db = self._sqlite_path()
        return db.exists() if db is not None else True

    def _sqlite_path(self) -> Path | None:
        uri = self.tracking_uri
        return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None

    def _peek(self, ref: ModelRef) -> tuple[str, str] | None:
        """``(version, location)`` straight from a local SQLite registry, or None (ask MLflow)."""
        db = self._sqlite_path()
        if not self.sqlite_fast_path or db is None or "?" in str(db) or ref.alias is None:
            return None
        return peek_sqlite_alias(db, ref.name, ref.alias)

    def _client(self) -> Any:
        # MLflow retries an unreachable server for minutes by default; start-up should not.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _registry_version(self, ref: ModelRef) -> str | None:
        """The alias's version through MLflow; None when the registry says there is no such
        alias/model."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self._client().get_model_version_by_alias(ref.name, ref.alias)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") in (
                "RESOURCE_DOES_NOT_EXIST",
                "INVALID_PARAMETER_VALUE",
            ):
                return None
            raise
        return str(mv.version)

    def _resolve_registry(self, ref: ModelRef, *, prefer_cache: bool) -> Resolution:
        if not self._registry_exists():
            cached = self._cached_for(ref)
            if cached is None:
                return Resolution(None, "no model registry yet: serving ladder")
            model = self._load_cached(ref, cached, source="cache")
            return Resolution(
                model,
                f"no registry at {redact(self.tracking_uri)}; serving cached version {cached}",
            )
        hint = self._peek(ref) if ref.kind == "alias" else None
        if hint is None and prefer_cache and ref.kind == "alias":
            early = self._serve_recorded(ref)
            if early is not None:
                return early
        location: str | None = None
        try:
            if ref.kind == "version":
                version = ref.version
            elif hint is not None:
                version, location = hint
            else:
                version = self._registry_version(ref)
        except Exception as exc:  # unreachable server, broken database, network
            cached = self._cached_for(ref)
            # the note is published on /readyz: the exception's type only (its text may quote
            # the tracking URI); the log line has the detail, redacted
            why = f"registry unreachable ({type(exc).__name__})"
            log.warning("%s: %s", why, redact(str(exc)[:300]))
            if cached is None:
                return Resolution(None, f"{why}; no cached model: serving ladder")
            model = self._load_cached(ref, cached, source="cache")
            return Resolution(model, f"{why}; serving cached version {cached}")
        if version is None:
            return Resolution(None, f"no model registered as {ref.label}: serving ladder")
        uri = f"models:/{ref.name}/{version}"
        if uri in self._loaded:
            self._remember_alias(ref, version)
            return Resolution(dataclasses.replace(self._loaded[uri], source="registry"))
        path = self._version_dir(ref.name, version)
        if not path.exists():
            try:
                self._download(ref.name, version, path, location)
            except Exception as exc:
                raise ModelLoadError(
                    f"cannot download model {ref.name} version {version}: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
        try:
            expected = self._registry_digest(ref.name, version)
        except Exception as exc:  # the registry answered a moment ago; this is not fatal
            log.warning("cannot read the recorded sha256 of %s: %s", uri, type(exc).__name__)
            expected = self._recorded_digest(uri)
        model = self._load_dir(path, version, source="registry", uri=uri, expected=expected)
        if expected is not None:
            self._record_digest(uri, expected)
        self._remember_alias(ref, version)
        return Resolution(model)

    def _serve_recorded(self, ref: ModelRef) -> Resolution | None:
        """The cached version this alias last resolved to in this registry, unconfirmed."""
        version, registry = self._alias_record(ref)
        if version is None or registry != self.tracking_uri:
            return None  # never resolved here: the cache says nothing about this registry
        if not self._version_dir(ref.name, version).exists():
            return None
        try:
            model = self._load_cached(ref, version, source="cache")
        except ModelLoadError as exc:  # a damaged cache entry: ask the registry as usual
            log.warning("cached %s: %s", ref.label, exc)
            return None
        note = f"serving cached version {version} of {ref.label}; asking the registry"
        return Resolution(model, note, unconfirmed=True)

    def _registry_digest(self, name: str, version: str) -> str | None:
        """The sha256 recorded on the model version at registration (``DIGEST_TAG``), None
        when the version has none (registered before digests were recorded)."""
        db = self._sqlite_path()
        if self.sqlite_fast_path and db is not None and "?" not in str(db):
            found = peek_sqlite_tag(db, name, version, DIGEST_TAG)
            if found is not None:
                return found or None
        tags = getattr(self._client().get_model_version(name, version), "tags", None) or {}
        return tags.get(DIGEST_TAG)

    def _digests_file(self) -> Path:
        return self.cache_dir / "digests.json"

    def _recorded_digest(self, uri: str) -> str | None:
        """The registry's digest of a cached version, as recorded when it was last verified."""
        try:
            data = json.loads(self._digests_file().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        value = data.get(uri) if isinstance(data, dict) else None
        return value if isinstance(value, str) else None

    def _record_digest(self, uri: str, digest: str) -> None:
        try:
            data = json.loads(self._digests_file().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        data = data if isinstance(data, dict) else {}
        if data.get(uri) == digest:
            return
        data[uri] = digest
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".digests-", suffix=".tmp", dir=self.cache_dir)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=2))
        os.replace(tmp, self._digests_file())

    def _download(self, name: str, version: str, dest: Path, location: str | None) -> None:
        src = location or self._client().get_model_version_download_uri(name, version)
        fetch_artifacts(src, dest, {"name": name, "version": version}, self.tracking_uri)

    # -- cache -------------------------------------------------------------------------------
    def _version_dir(self, name: str, version: str) -> Path:
        leaf = version if name == DEFAULT_NAME else f"{name}-{version}"
        return self.cache_dir / leaf

    def _aliases_file(self) -> Path:
        return self.cache_dir / "aliases.json"

    def _read_aliases(self) -> dict[str, Any]:
        try:
            data = json.loads(self._aliases_file().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _alias_record(self, ref: ModelRef) -> tuple[str | None, str | None]:
        """``(version, registry URI)`` the alias last resolved to; the registry is None for
        records written before it was kept (``{"nextstep@champion": "3"}``)."""
        entry = self._read_aliases().get(f"{ref.name}@{ref.alias}")
        if isinstance(entry, dict):
            v, reg = entry.get("version"), entry.get("registry")
            return (None if v is None else str(v)), (None if reg is None else str(reg))
        return (None if entry is None else str(entry)), None

    def _remember_alias(self, ref: ModelRef, version: str) -> None:
        if ref.kind != "alias":
            return
        data = self._read_aliases()
        key = f"{ref.name}@{ref.alias}"
        entry = data.get(key)
        if isinstance(entry, dict) and (entry.get("version"), entry.get("registry")) == (
            version,
            self.tracking_uri,
        ):
            return
        data[key] = {"version": version, "registry": self.tracking_uri, "at": time.time()}
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # a unique temporary name: two workers may record at the same moment
        fd, tmp = tempfile.mkstemp(prefix=".aliases-", suffix=".tmp", dir=self.cache_dir)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=2))
        os.replace(tmp, self._aliases_file())

    def _cached_for(self, ref: ModelRef) -> str | None:
        """The cached version for ``ref``: a pinned version, the alias's last, or the newest."""
        if ref.kind == "version":
            return ref.version if self._version_dir(ref.name, ref.version or "").exists() else None
        v, _registry = self._alias_record(ref)
        if v and self._version_dir(ref.name, v).exists():
            return v
        if not self.cache_dir.exists():
            return None
        prefix = "" if ref.name == DEFAULT_NAME else f"{ref.name}-"
        versions = [
            p.name[len(prefix) :]
            for p in self.cache_dir.iterdir()
            if p.is_dir() and p.name.startswith(prefix) and p.name[len(prefix) :].isdigit()
        ]
        return max(versions, key=int) if versions else None

    def _load_cached(self, ref: ModelRef, version: str, *, source: str) -> LoadedModel:
        uri = f"models:/{ref.name}/{version}"
        if uri in self._loaded:
            return self._loaded[uri]
        path = self._version_dir(ref.name, version)
        expected = self._recorded_digest(uri)
        return self._load_dir(path, version, source=source, uri=uri, expected=expected)

    # -- loading -----------------------------------------------------------------------------
    def _verify(self, path: Path, uri: str, expected: str) -> None:
        directory = serving_directory(path)
        try:
            if directory is None:
                raise ModelLoadError(f"model {uri} has no serving artifact to verify")
            verify_serving(directory, expected)
        except NextstepError as exc:
            log.error("MODEL REFUSED: %s", exc)
            raise ModelLoadError(f"model {uri} refused: {exc}") from None

    def _load_path(self, ref: ModelRef) -> LoadedModel:
        path = ref.path
        assert path is not None
        if not path.is_dir():
            raise ModelLoadError(f"model directory {path} does not exist")
        key = f"path:{path.resolve()}"
        if key in self._loaded:
            return self._loaded[key]
        model = self._load_dir(path, None, source="path", uri=str(path))
        self._loaded[key] = model
        return model

    def _load_dir(
        self, path: Path, version: str | None, *, source: str, uri: str, expected: str | None = None
    ) -> LoadedModel:
        """Load a model directory; with ``expected`` (the sha256 recorded at registration) its
        serving artifact is verified first and refused, loudly, when its bytes differ."""
        if expected is not None:
            self._verify(path, uri, expected)
        elif source != "path":
            log.warning("%s has no recorded sha256: loading it unverified", uri)
        try:
            scorer, meta = self.bundle_loader(path, self.catalog)
        except Exception as exc:  # ModelLoadError, ImportError, anything a broken pickle throws
            raise ModelLoadError(
                f"model {uri} refused: {type(exc).__name__}: {str(exc)[:300]}"
            ) from None
        meta = dict(meta or {})
        resolved = version or str(meta.get("version") or meta.get("model_version") or path.name)
        model = LoadedModel(resolved, scorer, meta, source, uri)
        if version is not None:
            self._loaded[uri] = model
        return model
