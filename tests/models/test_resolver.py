"""The one model resolver the service and the batch commands share: references, the cache
layout, and when the registry is (not) asked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from models.resolver import MODEL_MARKER, ModelRef, Registry, marker_version, parse_ref

DEFAULT = "models:/nextstep@champion"


def _no_client() -> Any:
    raise AssertionError("MLflow must not be asked")


def test_a_bare_alias_or_version_names_the_default_model() -> None:
    assert parse_ref("prod", "models:/other@champion") == ModelRef("alias", "other", alias="prod")
    assert parse_ref("7", "models:/other@champion") == ModelRef("version", "other", version="7")


def test_a_path_under_the_user_directory_is_expanded() -> None:
    assert parse_ref("~/models/x", DEFAULT) == ModelRef("path", path=Path.home() / "models/x")
    assert parse_ref("file://~/m", DEFAULT) == ModelRef("path", path=Path.home() / "m")


def test_the_cache_layout(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "cache", "sqlite:///nowhere.db", client=_no_client)
    assert reg.version_dir("nextstep", "3") == tmp_path / "cache" / "3"
    assert reg.version_dir("other", "3") == tmp_path / "cache" / "other-3"
    assert reg.cached_versions("nextstep") == []
    for leaf in ("3", "12", "other-5", ".download-abc", "aliases.json"):
        (tmp_path / "cache" / leaf).mkdir(parents=True)
    assert sorted(reg.cached_versions("nextstep"), key=int) == ["3", "12"]
    assert reg.cached_versions("other") == ["5"]


def test_no_registry_means_no_version_without_asking_mlflow(tmp_path: Path) -> None:
    reg = Registry(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", client=_no_client)
    assert not reg.exists()
    assert reg.alias_version("nextstep", "champion") is None


@pytest.mark.parametrize(
    ("uri", "fast"),
    [("sqlite:///x.db?mode=ro", True), ("sqlite:///x.db", False), ("http://mlflow:5000", True)],
)
def test_the_direct_read_is_skipped_when_it_cannot_apply(
    tmp_path: Path, uri: str, fast: bool
) -> None:
    """A query string, the escape hatch or a server: MLflow decides (peek answers None)."""
    reg = Registry(tmp_path, uri, client=_no_client, sqlite_fast_path=fast)
    assert reg.peek("nextstep", "champion") is None
    assert reg.peek_tag("nextstep", "1", "k") is None


def test_the_marker_says_which_version_a_directory_is(tmp_path: Path) -> None:
    assert marker_version(tmp_path) is None
    (tmp_path / MODEL_MARKER).write_text('{"name": "nextstep", "version": "4"}')
    assert marker_version(tmp_path) == "4"
    (tmp_path / MODEL_MARKER).write_text("not json")
    assert marker_version(tmp_path) is None
