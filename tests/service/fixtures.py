"""Fixtures shared by the service and the reliability tests (imported by both conftests)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.service.helpers import CATALOG


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read the environment: keep the developer's NEXTSTEP_* out of the tests."""
    for name in list(os.environ):
        if name.startswith("NEXTSTEP_") or name == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(name)


@pytest.fixture
def catalog_path(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(CATALOG), encoding="utf-8")
    return path
