"""Start-up speed without giving up correctness (issue: ``nextstep serve`` to ``/readyz``).

Real MLflow SQLite registries in temporary directories, no mocked database: the direct read of
a local registry agrees with MLflow itself, a cold start with such a registry never imports
MLflow, and a cached champion serves at once even when the registry cannot be read, with a
champion promoted while the service was down swapped in shortly after, without a restart.
Models are tiny ``model.json`` directories loaded by a fake bundle loader (no LightGBM).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from features.catalog import Catalog, load_catalog
from models.resolver import MODEL_MARKER, local_artifact_dir, parse_ref, peek_sqlite_alias
from service.app import create_app
from service.model_loader import ModelLoader
from service.runtime import ModelDeciderFactory
from service.settings import Settings
from tests.service.helpers import CATALOG, FakeScorer

pytestmark = pytest.mark.xdist_group("mlflow-registry")

DEFAULT = "models:/nextstep@champion"


def tagged_bundle(path: Path, catalog: Catalog) -> tuple[Any, dict[str, Any]]:
    """A fake bundle: ``model.json`` with a ``tag``; the scorer is a FakeScorer."""
    data = json.loads((Path(path) / "model.json").read_text())
    scorer = FakeScorer(catalog)
    scorer.tag = data["tag"]  # type: ignore[attr-defined]
    return scorer, {}


def write_model(root: Path, tag: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.json").write_text(json.dumps({"tag": tag}))
    return root


class Registry:
    """A real MLflow model registry in a SQLite file, driven through MlflowClient."""

    def __init__(self, tmp: Path) -> None:
        from mlflow import MlflowClient

        self.db = tmp / "mlflow.db"
        self.uri = f"sqlite:///{self.db}"
        self.tmp = tmp
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.client.create_registered_model("nextstep")

    def add(self, tag: str, alias: str | None = "champion") -> str:
        source = write_model(self.tmp / "artifacts" / tag, tag)
        mv = self.client.create_model_version("nextstep", source=str(source))
        if alias is not None:
            self.client.set_registered_model_alias("nextstep", alias, mv.version)
        return str(mv.version)

    @contextmanager
    def locked(self) -> Iterator[sqlite3.Connection]:
        """Hold an exclusive lock: nobody can read the registry until the block ends."""
        conn = sqlite3.connect(self.db, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield conn
        finally:
            conn.execute("ROLLBACK")
            conn.close()


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def mlflow_answer(reg: Registry, alias: str) -> tuple[str, str] | None:
    from mlflow.exceptions import MlflowException

    try:
        mv = reg.client.get_model_version_by_alias("nextstep", alias)
    except MlflowException:
        return None
    return str(mv.version), reg.client.get_model_version_download_uri("nextstep", mv.version)


@pytest.mark.slow
def test_the_direct_registry_read_agrees_with_mlflow(registry: Registry) -> None:
    """Guards the fast path against MLflow schema changes: same answers as MlflowClient."""
    v1 = registry.add("one")
    assert peek_sqlite_alias(registry.db, "nextstep", "champion") == mlflow_answer(
        registry, "champion"
    )
    assert peek_sqlite_alias(registry.db, "nextstep", "champion")[0] == v1  # type: ignore[index]
    v2 = registry.add("two")
    registry.add("three", alias="challenger")
    for alias in ("champion", "challenger"):
        assert peek_sqlite_alias(registry.db, "nextstep", alias) == mlflow_answer(registry, alias)
    assert peek_sqlite_alias(registry.db, "nextstep", "champion")[0] == v2  # type: ignore[index]
    location = peek_sqlite_alias(registry.db, "nextstep", "champion")[1]  # type: ignore[index]
    assert local_artifact_dir(location) == registry.tmp / "artifacts" / "two"
    # "don't know" (MLflow decides) rather than a guess
    registry.client.delete_registered_model_alias("nextstep", "challenger")
    assert peek_sqlite_alias(registry.db, "nextstep", "challenger") is None
    assert peek_sqlite_alias(registry.db, "other", "champion") is None
    assert peek_sqlite_alias(registry.db, "nextstep", "latest") is None
    assert peek_sqlite_alias(registry.tmp / "missing.db", "nextstep", "champion") is None
    with registry.locked():
        t0 = time.perf_counter()
        assert peek_sqlite_alias(registry.db, "nextstep", "champion", timeout=0.1) is None
        assert time.perf_counter() - t0 < 2


def test_local_artifact_locations(tmp_path: Path) -> None:
    assert local_artifact_dir(tmp_path.as_uri()) == tmp_path
    assert local_artifact_dir(str(tmp_path)) == tmp_path
    assert local_artifact_dir((tmp_path / "missing").as_uri()) is None
    for remote in ("models:/m-123", "s3://bucket/x", "mlflow-artifacts:/1/x", "file://host/x"):
        assert local_artifact_dir(remote) is None


@pytest.mark.slow
def test_a_cold_start_on_a_local_registry_never_imports_mlflow(
    registry: Registry, tmp_path: Path, catalog_path: Path
) -> None:
    registry.add("one")
    home = tmp_path / "home"
    code = f"""
import sys, time
from pathlib import Path
from fastapi.testclient import TestClient
from features.catalog import load_catalog
from service.app import create_app
from service.model_loader import ModelLoader
from service.runtime import ModelDeciderFactory
from service.settings import Settings
from tests.service.test_startup import tagged_bundle
s = Settings(home={str(home)!r}, catalog={str(catalog_path)!r},
             mlflow_tracking_uri={registry.uri!r}, policy="greedy")
loader = ModelLoader(s.home, s.tracking_uri, load_catalog(s.catalog), bundle_loader=tagged_bundle)
with TestClient(create_app(s, decider_factory=ModelDeciderFactory(s, loader))) as c:
    ready = c.get("/readyz").json()
    time.sleep(1.0)  # nothing left to confirm: no background MLflow either
    print(ready["model"], ready["arms"][0]["model_source"], ready["notes"],
          "mlflow" in sys.modules)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.split("\n")[0] == "1 registry [] False", out.stdout + out.stderr
    cached = home / "model-cache" / "1"
    assert json.loads((cached / "model.json").read_text())["tag"] == "one"
    assert json.loads((cached / ".nextstep-model.json").read_text())["version"] == "1"
    record = json.loads((home / "model-cache" / "aliases.json").read_text())
    assert record["nextstep@champion"]["version"] == "1"
    assert record["nextstep@champion"]["registry"] == registry.uri


def _app(home: Path, catalog_path: Path, uri: str, *, fast_path: bool) -> TestClient:
    settings = Settings(home=home, catalog=catalog_path, mlflow_tracking_uri=uri, policy="greedy")
    loader = ModelLoader(
        home,
        settings.tracking_uri,
        load_catalog(catalog_path),
        bundle_loader=tagged_bundle,
        sqlite_fast_path=fast_path,
    )
    return TestClient(create_app(settings, decider_factory=ModelDeciderFactory(settings, loader)))


def _wait_for(client: TestClient, version: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = client.get("/readyz").json()
        if ready["model"] == version:
            return ready
        time.sleep(0.1)
    pytest.fail(f"version {version} was not picked up: {ready}")


@pytest.mark.slow
@pytest.mark.parametrize("fast_path", [True, False], ids=["direct-read", "mlflow-only"])
def test_a_cached_champion_serves_at_once_and_a_newer_one_follows(
    registry: Registry, tmp_path: Path, catalog_path: Path, fast_path: bool
) -> None:
    """Restart with the registry unreadable (locked): ready on the cached champion without
    waiting for it; the champion promoted while the service was down arrives by itself."""
    home = tmp_path / "home"
    registry.add("one")
    with _app(home, catalog_path, registry.uri, fast_path=fast_path) as first:
        assert first.get("/readyz").json()["model"] == "1"
    registry.add("two")  # promoted while the service is down

    with registry.locked():
        client = _app(home, catalog_path, registry.uri, fast_path=fast_path)
        client.__enter__()
        try:
            ready = client.get("/readyz").json()
        except BaseException:
            client.__exit__(None, None, None)
            raise
    try:
        # ready while the registry is still locked, with its question still open: start-up
        # did not wait for the registry (no wall-clock bound needed to tell)
        assert ready["model"] == "1" and ready["arms"][0]["model_source"] == "cache", ready
        assert "asking the registry" in " ".join(ready["notes"]), ready
        r = client.post("/v1/next-step", json={"user_id": "u1"})
        assert r.status_code == 200 and r.json()["model_version"] in ("1", "2")

        ready = _wait_for(client, "2")
        assert ready["arms"][0]["model_source"] == "registry" and ready["notes"] == [], ready
        assert client.post("/v1/next-step", json={"user_id": "u2"}).json()["model_version"] == "2"
        assert "nextstep_model_generation 2.0" in client.get("/metrics").text
    finally:
        client.__exit__(None, None, None)
    record = json.loads((home / "model-cache" / "aliases.json").read_text())
    assert record["nextstep@champion"]["version"] == "2"


@pytest.mark.slow
def test_an_unchanged_champion_is_confirmed_without_a_swap(
    registry: Registry, tmp_path: Path, catalog_path: Path
) -> None:
    """The registry agrees with the cache: same generation (no rebuild), the note goes away."""
    home = tmp_path / "home"
    registry.add("one")
    with _app(home, catalog_path, registry.uri, fast_path=False) as first:
        assert first.get("/readyz").json()["model"] == "1"
    with _app(home, catalog_path, registry.uri, fast_path=False) as client:
        ready = client.get("/readyz").json()
        assert ready["arms"][0]["model_source"] == "cache", ready
        deadline = time.monotonic() + 60
        while ready["arms"][0]["model_source"] != "registry" and time.monotonic() < deadline:
            time.sleep(0.1)
            ready = client.get("/readyz").json()
        assert ready["model"] == "1" and ready["arms"][0]["model_source"] == "registry", ready
        assert ready["notes"] == []
        assert "nextstep_model_generation 1.0" in client.get("/metrics").text


@pytest.mark.slow
def test_an_unreadable_registry_is_reported_then_asked_again(
    registry: Registry, tmp_path: Path, catalog_path: Path
) -> None:
    """Runtime level: confirmation fails while the registry is locked (the cached champion
    keeps serving and /readyz says why), then succeeds once it is readable."""
    from service.runtime import Runtime

    home = tmp_path / "home"
    registry.add("one")
    settings = Settings(
        home=home, catalog=catalog_path, mlflow_tracking_uri=registry.uri, policy="greedy"
    )
    cat = load_catalog(catalog_path)

    def runtime() -> Runtime:
        loader = ModelLoader(home, registry.uri, cat, bundle_loader=tagged_bundle)
        return Runtime(settings, cat, ModelDeciderFactory(settings, loader))

    runtime().start()  # caches version 1 and records it
    registry.add("two")
    with registry.locked():
        rt = runtime()
        rt.start()
        assert rt.unconfirmed() == ["champion"]
        assert rt.confirm() == "unreachable"
        arm = rt.current.arms["champion"]
        assert arm.decider.model_version == "1" and arm.model_source == "cache"
        assert "registry unreachable" in (arm.note or "") and "cached version 1" in (arm.note or "")
        assert rt.current.generation == 1
    assert rt.confirm() == "swapped"
    assert rt.current.arms["champion"].decider.model_version == "2"
    assert rt.unconfirmed() == [] and rt.confirm() == "nothing"


def test_a_record_from_another_registry_is_not_trusted(tmp_path: Path) -> None:
    """The cache says what the champion was *in the registry that resolved it*; pointed at
    another registry, start-up asks that one (here unreachable: the usual outage note)."""
    cache = tmp_path / "model-cache"
    write_model(cache / "4", "four")
    record = {"version": "4", "registry": "sqlite:////elsewhere/mlflow.db", "at": 0}
    (cache / "aliases.json").write_text(json.dumps({"nextstep@champion": record}))
    cat = Catalog.from_data(CATALOG)
    loader = ModelLoader(tmp_path, "http://127.0.0.1:9", cat, bundle_loader=tagged_bundle)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        mp.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
        res = loader.resolve(parse_ref(None, DEFAULT), prefer_cache=True)
    assert res.model is not None and res.model.version == "4" and not res.unconfirmed
    assert "registry unreachable" in (res.note or "")
    here = ModelLoader(tmp_path, "sqlite:////elsewhere/mlflow.db", cat, bundle_loader=tagged_bundle)
    assert here._alias_record(parse_ref(None, DEFAULT)) == ("4", "sqlite:////elsewhere/mlflow.db")


@pytest.mark.slow
def test_batch_resolution_reads_a_local_registry_like_mlflow(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``training.tracking`` and ``training.modelio`` (batch commands, ``nextstep demo``) take
    the same direct read, and it agrees with MLflow's answer."""
    from training import modelio, tracking

    monkeypatch.setenv("NEXTSTEP_HOME", str(tmp_path / "batch-home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.uri)
    registry.add("one")
    v2 = registry.add("two")
    assert tracking.alias_version("champion") == v2
    assert tracking.registry().mlflow_version("nextstep", "champion") == v2
    assert tracking.alias_version("challenger") is None
    resolved = modelio.resolve("champion")
    assert resolved.version == v2 and resolved.path == tmp_path / "batch-home" / "model-cache" / v2
    assert json.loads((resolved.path / "model.json").read_text())["tag"] == "two"
    assert json.loads((resolved.path / MODEL_MARKER).read_text())["version"] == v2
