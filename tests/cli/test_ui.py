"""``nextstep ui`` opens MLflow on nextstep's own store, not on an empty ``./mlruns``."""

from __future__ import annotations

from pathlib import Path

import pytest

from features.errors import NextstepError
from nextstep.cli.ui import ui_args


def test_ui_serves_the_store_under_nextstep_home(tmp_path: Path, nextstep_home: Path) -> None:
    args = ui_args("127.0.0.1", 5055)
    assert args[1:4] == ["-m", "mlflow", "server"]
    store = args[args.index("--backend-store-uri") + 1]
    assert store == f"sqlite:///{(tmp_path / 'home').resolve() / 'mlflow.db'}"
    assert args[args.index("--port") + 1] == "5055" and args[args.index("--workers") + 1] == "1"


def test_ui_follows_mlflow_tracking_uri_and_refuses_a_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/other.db")
    assert f"sqlite:///{tmp_path}/other.db" in ui_args("127.0.0.1", 5000)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    with pytest.raises(NextstepError, match="open it in a browser"):
        ui_args("127.0.0.1", 5000)
