"""Load a trained model for batch work: registry alias, registry version or local directory.

``load_scorer("models:/nextstep@champion", catalog)`` resolves the alias to a version, downloads
that version's artifacts once to ``{NEXTSTEP_HOME}/model-cache/<version>/`` (the same layout the
service's model loader uses, written to a temporary directory and renamed, so an entry is
complete or absent; versions are immutable, so a cached entry is reused as is) and loads
its serving artifact (``models.serving.load_serving_dir``; the pickled bundle only under
``nextstep --trust-registry``). Also accepted: ``models:/nextstep/3``, a
bare alias or version number (``champion``, ``3``) and a local directory holding a bundle
(``file://`` optional). MLflow is imported only when the registry is needed, and not even then
for the local default (a SQLite registry with artifacts on this machine): the alias is read
straight from the database and the artifacts copied, as the service does at start-up
(``service.model_loader.peek_sqlite_alias``), which saves about 2.5 s per command.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from features.catalog import Catalog
from features.errors import NextstepError
from models.bundle import ModelBundle, ModelScorer, load_bundle
from models.serving import load_serving_dir
from service.model_loader import MODEL_MARKER, MODEL_URI, fetch_artifacts, peek_sqlite_alias
from training import tracking


class ModelNotFoundError(NextstepError):
    """There is no model at the given URI (no registry, no such alias or version, no bundle)."""


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # local directory holding the bundle
    version: str | None  # registry version, None for a local directory without a marker
    uri: str


def resolve(model_uri: str) -> ResolvedModel:
    """A local directory with the model's files for ``model_uri`` (downloading when needed)."""
    raw = str(model_uri).strip()
    m = MODEL_URI.match(raw)
    if m is None and not ("/" in raw or os.sep in raw or Path(raw).exists()):
        # bare alias or version of the default model: "champion", "3"
        m = MODEL_URI.match(
            f"models:/{tracking.MODEL_NAME}/{raw}"
            if raw.isdigit()
            else f"models:/{tracking.MODEL_NAME}@{raw}"
        )
    if m is None:
        path = Path(raw[len("file://") :] if raw.startswith("file://") else raw).expanduser()
        if not path.is_dir():
            raise ModelNotFoundError(f"model directory {path} does not exist")
        return ResolvedModel(path, _local_version(path), str(path))
    name, alias, version = m["name"], m["alias"], m["version"]
    location: str | None = None
    if alias is not None:
        hint = _peek(name, alias)
        version, location = (
            hint if hint is not None else (tracking.alias_version(alias, name), None)
        )
        if version is None:
            raise ModelNotFoundError(
                f"no model registered as {raw} (train one with `nextstep train --promote`, "
                "or pass --model with a version or a directory)"
            )
    assert version is not None
    dest = _cache_dir(name, version)
    if not dest.exists():
        _download(name, version, dest, raw, location)
    return ResolvedModel(dest, version, f"models:/{name}/{version}")


def alias_version(alias: str, name: str = tracking.MODEL_NAME) -> str | None:
    """``tracking.alias_version`` without importing MLflow when the registry is the local
    SQLite default (``nextstep demo`` asks this just before serving, where MLflow would cost
    about 2.5 s and 190 MB the service never needs)."""
    hint = _peek(name, alias)
    return hint[0] if hint is not None else tracking.alias_version(alias, name)


# ``nextstep --trust-registry``: a model without a serving artifact may be loaded from its
# pickled bundle (which runs code). Off by default: scoring commands read the artifact only.
TRUST_REGISTRY = False


def load_scorer(model_uri: str, catalog: Catalog | None) -> tuple[ModelScorer, str | None]:
    """``(scorer, version)`` for ``model_uri`` from its serving artifact (no pickle; the
    joblib bundle only under ``--trust-registry``); smoke-tested on ``catalog``."""
    resolved = resolve(model_uri)
    scorer, meta = load_serving_dir(resolved.path, catalog, trust_pickle=TRUST_REGISTRY)
    version = resolved.version or _meta_version(meta)
    return scorer, version


def load_model_bundle(model_uri: str) -> tuple[ModelBundle, str | None]:
    """The raw ``ModelBundle`` and its version (for evaluation and the promotion gate)."""
    resolved = resolve(model_uri)
    bundle = load_bundle(resolved.path)
    return bundle, resolved.version or _meta_version(bundle.meta)


# -- internals ---------------------------------------------------------------------------------
def _cache_dir(name: str, version: str) -> Path:
    leaf = version if name == tracking.MODEL_NAME else f"{name}-{version}"
    return tracking.home() / "model-cache" / leaf


def _peek(name: str, alias: str) -> tuple[str, str] | None:
    """``(version, artifact location)`` from a local SQLite registry without MLflow, or None."""
    uri = tracking.tracking_uri()
    if not uri.startswith("sqlite:///") or "?" in uri:
        return None
    db = Path(uri[len("sqlite:///") :])
    if not db.exists():
        return None

    return peek_sqlite_alias(db, name, alias)


def _download(name: str, version: str, dest: Path, raw: str, location: str | None = None) -> None:
    """Fetch a version's artifacts into the cache: a plain copy when ``location`` (or the
    registry's download URI) is a directory on this machine, else MLflow's download."""
    if location is None:
        if not tracking.registry_exists():
            raise ModelNotFoundError(
                f"no model registered as {raw}: there is no tracking database at "
                f"{tracking.tracking_uri()} (train one with `nextstep train --promote`)"
            )
        from mlflow.exceptions import MlflowException

        try:
            location = tracking.client().get_model_version_download_uri(name, version)
        except MlflowException:
            raise ModelNotFoundError(f"no version {version} of registered model {name!r}") from None
    fetch_artifacts(location, dest, {"name": name, "version": version}, tracking.tracking_uri())


def _local_version(path: Path) -> str | None:
    try:
        return str(json.loads((path / MODEL_MARKER).read_text(encoding="utf-8"))["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _meta_version(meta: dict) -> str | None:
    v = meta.get("version") or meta.get("model_version")
    return None if v is None else str(v)
