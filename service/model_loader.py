"""Model resolution: registry alias -> version -> local cache -> loaded scorer.

The only module that talks to MLflow, and it imports MLflow lazily (about 1.2 s and 190 MB):
a service with no registry never pays for it and the hot path never touches it. Every version
ever served is kept under ``{home}/model-cache/{version}/`` (written to a temporary directory and
renamed, so a cache entry is complete or absent) and ``aliases.json`` remembers which version each
alias last pointed at, so an unreachable registry degrades to "serve the cached champion" rather
than "serve nothing". A model that cannot be loaded is refused with a message saying why; the
caller decides what keeps serving.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from features.catalog import Catalog
from features.errors import NextstepError

log = logging.getLogger("nextstep.service.model")
DEFAULT_NAME = "nextstep"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))$")
_NO_MODEL = {"", "none", "null", "ladder"}


class ModelRefused(NextstepError):
    """A model exists but cannot be used (corrupt, incompatible, failed its smoke test)."""


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
    m = _URI.match(raw)
    if m:
        if m["alias"]:
            return ModelRef("alias", name=m["name"], alias=m["alias"])
        return ModelRef("version", name=m["name"], version=m["version"])
    if raw.startswith("file://"):
        return ModelRef("path", path=Path(raw[len("file://") :]))
    if "/" in raw or os.sep in raw or Path(raw).is_dir():
        return ModelRef("path", path=Path(raw))
    base = _URI.match(default_uri.strip())
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


BundleLoader = Callable[[Path, Catalog], tuple[Any, Mapping[str, Any]]]


def _default_bundle_loader(path: Path, catalog: Catalog) -> tuple[Any, Mapping[str, Any]]:
    from models.bundle import load_bundle_dir

    return load_bundle_dir(path, catalog)


class ModelLoader:
    """Resolves references against the registry, keeps the cache, remembers loaded scorers."""

    def __init__(
        self,
        home: Path,
        tracking_uri: str,
        catalog: Catalog,
        *,
        bundle_loader: BundleLoader | None = None,
    ) -> None:
        self.cache_dir = Path(home) / "model-cache"
        self.tracking_uri = tracking_uri
        self.catalog = catalog
        self.bundle_loader = bundle_loader or _default_bundle_loader
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    # -- public ----------------------------------------------------------------------------
    def resolve(self, ref: ModelRef) -> Resolution:
        """Load the model ``ref`` names now. Raises ``ModelRefused`` for a broken model."""
        with self._lock:
            if ref.kind == "none":
                return Resolution(None, "no model configured: serving ladder")
            if ref.kind == "path":
                return Resolution(self._load_path(ref))
            return self._resolve_registry(ref)

    def current_version(self, ref: ModelRef) -> str | None:
        """The version ``ref`` points at in the registry now (None if unknown): for polling."""
        if ref.kind == "version":
            return ref.version
        if ref.kind != "alias" or not self._registry_exists():
            return None
        try:
            return self._registry_version(ref)
        except Exception:
            return None

    # -- registry --------------------------------------------------------------------------
    def _registry_exists(self) -> bool:
        """False when the tracking store is a SQLite file that does not exist (nothing trained)."""
        uri = self.tracking_uri
        if uri.startswith("sqlite:///"):
            return Path(uri[len("sqlite:///") :]).exists()
        return True

    def _client(self) -> Any:
        # MLflow retries an unreachable server for minutes by default; start-up should not.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _registry_version(self, ref: ModelRef) -> str | None:
        """The alias's version; None when the registry says there is no such alias/model."""
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

    def _resolve_registry(self, ref: ModelRef) -> Resolution:
        if not self._registry_exists():
            cached = self._cached_for(ref)
            if cached is None:
                return Resolution(None, "no model registry yet: serving ladder")
            model = self._load_cached(ref, cached, source="cache")
            return Resolution(
                model, f"no registry at {self.tracking_uri}; serving cached version {cached}"
            )
        try:
            version = ref.version if ref.kind == "version" else self._registry_version(ref)
        except Exception as exc:  # unreachable server, broken database, network
            cached = self._cached_for(ref)
            why = f"registry unreachable ({type(exc).__name__}: {str(exc)[:200]})"
            log.warning("%s", why)
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
                self._download(ref.name, version, path)
            except Exception as exc:
                raise ModelRefused(
                    f"cannot download model {ref.name} version {version}: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
        model = self._load_dir(path, version, source="registry", uri=uri)
        self._remember_alias(ref, version)
        return Resolution(model)

    def _download(self, name: str, version: str, dest: Path) -> None:
        import mlflow.artifacts

        src = self._client().get_model_version_download_uri(name, version)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=self.cache_dir))
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=src, dst_path=str(tmp), tracking_uri=self.tracking_uri
            )
            (Path(local) / ".nextstep-model.json").write_text(
                json.dumps({"name": name, "version": version, "source": src}), encoding="utf-8"
            )
            try:
                os.replace(local, dest)  # complete or absent, never half-written
            except OSError:
                if not dest.exists():  # not "another worker was faster"
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # -- cache -------------------------------------------------------------------------------
    def _version_dir(self, name: str, version: str) -> Path:
        leaf = version if name == DEFAULT_NAME else f"{name}-{version}"
        return self.cache_dir / leaf

    def _aliases_file(self) -> Path:
        return self.cache_dir / "aliases.json"

    def _remember_alias(self, ref: ModelRef, version: str) -> None:
        if ref.kind != "alias":
            return
        try:
            data = json.loads(self._aliases_file().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        key = f"{ref.name}@{ref.alias}"
        if data.get(key) == version:
            return
        data[key] = version
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._aliases_file().with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        os.replace(tmp, self._aliases_file())

    def _cached_for(self, ref: ModelRef) -> str | None:
        """The cached version for ``ref``: a pinned version, the alias's last, or the newest."""
        if ref.kind == "version":
            return ref.version if self._version_dir(ref.name, ref.version or "").exists() else None
        try:
            data = json.loads(self._aliases_file().read_text(encoding="utf-8"))
            v = data.get(f"{ref.name}@{ref.alias}")
            if v and self._version_dir(ref.name, v).exists():
                return str(v)
        except (OSError, ValueError):
            pass
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
        return self._load_dir(self._version_dir(ref.name, version), version, source=source, uri=uri)

    # -- loading -----------------------------------------------------------------------------
    def _load_path(self, ref: ModelRef) -> LoadedModel:
        path = ref.path
        assert path is not None
        if not path.is_dir():
            raise ModelRefused(f"model directory {path} does not exist")
        key = f"path:{path.resolve()}"
        if key in self._loaded:
            return self._loaded[key]
        model = self._load_dir(path, None, source="path", uri=str(path))
        self._loaded[key] = model
        return model

    def _load_dir(self, path: Path, version: str | None, *, source: str, uri: str) -> LoadedModel:
        try:
            scorer, meta = self.bundle_loader(path, self.catalog)
        except Exception as exc:  # ModelLoadError, ImportError, anything a broken pickle throws
            raise ModelRefused(
                f"model {uri} refused: {type(exc).__name__}: {str(exc)[:300]}"
            ) from None
        meta = dict(meta or {})
        resolved = version or str(meta.get("version") or meta.get("model_version") or path.name)
        model = LoadedModel(resolved, scorer, meta, source, uri)
        if version is not None:
            self._loaded[uri] = model
        return model
