"""The service's models: registry alias -> version -> local cache -> loaded scorer.

References are parsed, aliases read and versions downloaded into the cache by
``models.resolver`` (shared with the batch commands), which imports MLflow only when it must: a
service with no registry never pays for it and the hot path never touches it. This module adds
what keeps a service serving: the loaded scorers, remembered per version; ``aliases.json``, which
version each alias last pointed at and in which registry, so an unreachable registry degrades to
"serve the cached champion" rather than "serve nothing"; and the sha256 each version was
registered with, checked before a model is loaded. A model that cannot be loaded is refused with
a message saying why; the caller decides what keeps serving.

Start-up is kept short (``nextstep serve`` to ``/readyz`` in about 3 s, most of it importing
FastAPI, scikit-learn and LightGBM) in two ways:

* a local SQLite registry is read directly instead of through MLflow (``models.resolver``);
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
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from features.catalog import Catalog
from features.errors import NextstepError
from models.bundle import ModelLoadError
from models.resolver import ModelRef, Registry, meta_version
from models.serving import DIGEST_TAG, load_serving_dir, serving_directory, verify_serving
from service.redact import redact

log = logging.getLogger("nextstep.service.model")


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
        # False: always go through MLflow, even for a local SQLite registry (tests, escape hatch)
        self.registry = Registry(
            Path(home) / "model-cache",
            tracking_uri,
            client=self._client,
            sqlite_fast_path=sqlite_fast_path,
        )
        self.cache_dir = self.registry.cache_dir
        self.tracking_uri = tracking_uri
        self.catalog = catalog
        self.bundle_loader = bundle_loader or _default_bundle_loader
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
        if ref.kind != "alias" or ref.alias is None:
            return None
        return self.registry.alias_version(ref.name, ref.alias)

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
    def _client(self) -> Any:
        # MLflow retries an unreachable server for minutes by default; start-up should not.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _resolve_registry(self, ref: ModelRef, *, prefer_cache: bool) -> Resolution:
        if not self.registry.exists():
            cached = self._cached_for(ref)
            if cached is None:
                return Resolution(None, "no model registry yet: serving ladder")
            model = self._load_cached(ref, cached, source="cache")
            return Resolution(
                model,
                f"no registry at {redact(self.tracking_uri)}; serving cached version {cached}",
            )
        hint = self.registry.peek(ref.name, ref.alias) if ref.alias is not None else None
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
                assert ref.alias is not None
                version = self.registry.mlflow_version(ref.name, ref.alias)
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
        path = self.registry.version_dir(ref.name, version)
        if not path.exists():
            try:
                self.registry.download(ref.name, version, path, location)
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
        if not self.registry.version_dir(ref.name, version).exists():
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
        found = self.registry.peek_tag(name, version, DIGEST_TAG)
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
        _replace_json(self._digests_file(), data)

    # -- cache -------------------------------------------------------------------------------
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
        _replace_json(self._aliases_file(), data)

    def _cached_for(self, ref: ModelRef) -> str | None:
        """The cached version for ``ref``: a pinned version, the alias's last, or the newest."""
        if ref.kind == "version":
            pinned = self.registry.version_dir(ref.name, ref.version or "")
            return ref.version if pinned.exists() else None
        v, _registry = self._alias_record(ref)
        if v and self.registry.version_dir(ref.name, v).exists():
            return v
        versions = self.registry.cached_versions(ref.name)
        return max(versions, key=int) if versions else None

    def _load_cached(self, ref: ModelRef, version: str, *, source: str) -> LoadedModel:
        uri = f"models:/{ref.name}/{version}"
        if uri in self._loaded:
            return self._loaded[uri]
        path = self.registry.version_dir(ref.name, version)
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
        resolved = version or meta_version(meta) or path.name
        model = LoadedModel(resolved, scorer, meta, source, uri)
        if version is not None:
            self._loaded[uri] = model
        return model


def _replace_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` whole or not at all; the temporary name is unique because two
    workers may record at the same moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2))
    os.replace(tmp, path)
