"""One settings class for every process: the service and the commands read the same variables
with the same defaults, so they cannot disagree on where the registry is."""

from __future__ import annotations

from pathlib import Path

import pytest

from nextstep.settings import NextstepSettings
from service.settings import Settings
from training import tracking


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NEXTSTEP_HOME", "MLFLOW_TRACKING_URI", "NEXTSTEP_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)


def test_the_service_extends_the_shared_settings() -> None:
    assert issubclass(Settings, NextstepSettings)
    shared = set(NextstepSettings.model_fields)
    assert shared == {"home", "mlflow_tracking_uri"}
    assert shared <= set(Settings.model_fields)


def test_defaults_are_the_contract() -> None:
    s = NextstepSettings()
    assert s.home == Path(".nextstep")
    assert s.tracking_uri == f"sqlite:///{Path('.nextstep').resolve() / 'mlflow.db'}"
    assert s.registry_uri == s.tracking_uri == s.default_tracking_uri
    assert s.model_cache == Path(".nextstep") / "model-cache"


def test_service_and_commands_agree(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NEXTSTEP_HOME", str(tmp_path / "home"))
    expected = f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    assert Settings().tracking_uri == tracking.tracking_uri() == expected
    assert tracking.is_local_default()
    assert tracking.home() == tmp_path / "home" and (tmp_path / "home").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert Settings().tracking_uri == tracking.tracking_uri() == "http://mlflow:5000"
    assert not tracking.is_local_default()


def test_the_environment_is_read_on_every_command_call(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A notebook or a test may point two commands of one process at two homes."""
    monkeypatch.setenv("NEXTSTEP_HOME", str(tmp_path / "a"))
    first = tracking.tracking_uri()
    monkeypatch.setenv("NEXTSTEP_HOME", str(tmp_path / "b"))
    assert tracking.tracking_uri() != first
    assert tracking.registry().cache_dir == tmp_path / "b" / "model-cache"


def test_nextstep_prefixed_tracking_uri_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXTSTEP_MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert NextstepSettings().tracking_uri == "http://tracking:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")  # MLflow's own wins
    assert NextstepSettings().tracking_uri == "http://mlflow:5000"


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_variable_means_the_default(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("NEXTSTEP_HOME", value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", value)
    for s in (NextstepSettings(), Settings()):
        assert s.home == Path(".nextstep")
        assert s.tracking_uri == s.default_tracking_uri


def test_a_home_under_the_user_directory_is_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXTSTEP_HOME", "~/nextstep-home")
    assert NextstepSettings().home == Path.home() / "nextstep-home"


def test_mlflow_setup_leaves_the_environment_as_it_was(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``mlflow.set_tracking_uri`` exports the URI; ``tracking.setup`` undoes that, so the next
    command with another ``NEXTSTEP_HOME`` does not inherit this one's registry."""
    import os

    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("NEXTSTEP_HOME", str(tmp_path / "a"))
    mlflow = tracking.setup()
    assert mlflow.get_tracking_uri() == tracking.tracking_uri()
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    monkeypatch.setenv("NEXTSTEP_HOME", str(tmp_path / "b"))
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"
