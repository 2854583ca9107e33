"""Model resolution: references, the cache that keeps the service up, refusals, the registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from features.catalog import Catalog
from models.bundle import ModelLoadError
from models.resolver import ModelRef, parse_ref
from service.model_loader import ModelLoader
from tests.service.helpers import CATALOG

CAT = Catalog.from_data(CATALOG)
DEFAULT = "models:/nextstep@champion"


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        (None, ModelRef("alias", alias="champion")),
        ("champion", ModelRef("alias", alias="champion")),
        ("challenger", ModelRef("alias", alias="challenger")),
        ("3", ModelRef("version", version="3")),
        ("models:/other@prod", ModelRef("alias", name="other", alias="prod")),
        ("models:/nextstep/12", ModelRef("version", version="12")),
        ("none", ModelRef("none")),
        ("ladder", ModelRef("none")),
        ("", ModelRef("none")),
        ("/srv/models/x", ModelRef("path", path=Path("/srv/models/x"))),
        ("file:///srv/m", ModelRef("path", path=Path("/srv/m"))),
    ],
)
def test_parse_ref(ref: str | None, expected: ModelRef) -> None:
    assert parse_ref(ref, DEFAULT) == expected


def fake_bundle(path: Path, catalog: Catalog) -> tuple[Any, dict[str, Any]]:
    """Loads a directory holding ``model.json``; anything else is 'corrupt'."""
    data = json.loads((Path(path) / "model.json").read_text())
    if data.get("corrupt"):
        raise ValueError("bad magic number")
    return {"scorer": data["tag"]}, {"version": data.get("version")}


def write_model(root: Path, tag: str, **extra: Any) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.json").write_text(json.dumps({"tag": tag, **extra}))
    return root


def loader(home: Path, tracking: str | None = None) -> ModelLoader:
    uri = tracking or f"sqlite:///{home / 'no-such-mlflow.db'}"
    return ModelLoader(home, uri, CAT, bundle_loader=fake_bundle)


def test_no_registry_no_cache_means_no_model(tmp_path: Path) -> None:
    res = loader(tmp_path).resolve(parse_ref(None, DEFAULT))
    assert res.model is None and "serving ladder" in (res.note or "")


def test_no_registry_serves_the_alias_last_cached_version(tmp_path: Path) -> None:
    cache = tmp_path / "model-cache"
    write_model(cache / "3", "three")
    write_model(cache / "10", "ten")
    (cache / "aliases.json").write_text(json.dumps({"nextstep@champion": "3"}))
    res = loader(tmp_path).resolve(parse_ref(None, DEFAULT))
    assert res.model is not None and res.model.version == "3" and res.model.source == "cache"
    assert res.model.scorer == {"scorer": "three"} and "cached version 3" in (res.note or "")
    # an alias never seen: the newest cached version
    res = loader(tmp_path).resolve(parse_ref("challenger", DEFAULT))
    assert res.model is not None and res.model.version == "10"


def test_explicit_path_and_refusals(tmp_path: Path) -> None:
    ok = write_model(tmp_path / "m1", "one", version="v1")
    res = loader(tmp_path).resolve(parse_ref(str(ok), DEFAULT))
    assert res.model is not None and res.model.version == "v1" and res.model.source == "path"
    bad = write_model(tmp_path / "m2", "two", corrupt=True)
    with pytest.raises(ModelLoadError, match="bad magic number"):
        loader(tmp_path).resolve(parse_ref(str(bad), DEFAULT))
    with pytest.raises(ModelLoadError, match="does not exist"):
        loader(tmp_path).resolve(parse_ref(str(tmp_path / "missing/"), DEFAULT))


def test_a_service_without_a_model_never_imports_mlflow(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(CATALOG))
    code = f"""
import sys
from fastapi.testclient import TestClient
from service.app import create_app
from service.settings import Settings
s = Settings(home={str(tmp_path / "home")!r}, catalog={str(catalog)!r})
with TestClient(create_app(s)) as c:
    assert c.post("/v1/next-step", json={{"user_id": "u"}}).status_code == 200
heavy = sorted(m for m in ("mlflow", "lightgbm", "pandas", "sklearn") if m in sys.modules)
print(",".join(heavy))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip() == ""


@pytest.mark.slow
def test_registry_alias_download_cache_and_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real MLflow registry (SQLite): alias -> version -> download -> cache; then an outage."""
    from mlflow import MlflowClient

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    client.create_registered_model("nextstep")
    v1 = client.create_model_version("nextstep", source=str(write_model(tmp_path / "a1", "one")))
    client.set_registered_model_alias("nextstep", "champion", v1.version)
    home = tmp_path / "home"

    ml = loader(home, tracking)
    res = ml.resolve(parse_ref(None, DEFAULT))
    assert res.model is not None and res.model.source == "registry"
    assert res.model.version == "1" and res.model.scorer == {"scorer": "one"}
    assert (home / "model-cache" / "1" / "model.json").exists()
    assert ml.current_version(parse_ref(None, DEFAULT)) == "1"

    v2 = client.create_model_version("nextstep", source=str(write_model(tmp_path / "a2", "two")))
    client.set_registered_model_alias("nextstep", "champion", v2.version)
    assert ml.current_version(parse_ref(None, DEFAULT)) == "2"
    res = ml.resolve(parse_ref(None, DEFAULT))
    assert res.model is not None and res.model.version == "2"
    # pinned versions resolve without the alias
    assert ml.resolve(parse_ref("1", DEFAULT)).model.scorer == {"scorer": "one"}  # type: ignore[union-attr]

    v3 = client.create_model_version(
        "nextstep", source=str(write_model(tmp_path / "a3", "three", corrupt=True))
    )
    client.set_registered_model_alias("nextstep", "champion", v3.version)
    with pytest.raises(ModelLoadError, match="bad magic number"):
        ml.resolve(parse_ref(None, DEFAULT))

    # the registry goes away: a fresh process serves the alias's last good cached version
    client.set_registered_model_alias("nextstep", "champion", v2.version)
    ml.resolve(parse_ref(None, DEFAULT))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    down = loader(home, "http://127.0.0.1:9")
    res = down.resolve(parse_ref(None, DEFAULT))
    assert res.model is not None and res.model.version == "2" and res.model.source == "cache"
    assert "registry unreachable" in (res.note or "")
    # no such alias in a reachable registry: no model (the registry is the authority)
    res = ml.resolve(parse_ref("challenger", DEFAULT))
    assert res.model is None and "no model registered" in (res.note or "")


def test_models_no_arm_serves_are_dropped_after_a_swap(tmp_path: Path) -> None:
    """Each reload to a new version used to keep every earlier one in memory."""
    from service.runtime import ModelDeciderFactory
    from service.settings import Settings

    models = [write_model(tmp_path / f"m{i}", f"t{i}", version=f"v{i}") for i in range(3)]
    ml = loader(tmp_path)
    factory = ModelDeciderFactory(Settings(home=tmp_path), ml)
    from models.policies import PolicyConfig
    from service.experiments import Arm

    for path in models:
        arm = Arm(name="champion", policy=PolicyConfig.parse("ladder"), model=str(path))
        factory(CAT, arm)
        factory.retain([arm])
        assert [m.uri for m in ml._loaded.values()] == [str(path)]
