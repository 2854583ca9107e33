"""A refused ``NEXTSTEP_*`` value stops ``nextstep serve`` with one line naming the variable and
what it accepts (exit 2), before anything binds."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from nextstep.cli.app import app


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("NEXTSTEP_EXPLORATION", "greedy=0.1", "exploration must be 'none', 'epsilon=E'"),
        ("NEXTSTEP_EXPLORATION", "epsilon=2", "exploration must be"),
        ("NEXTSTEP_WATCH_WINDOW", "0", "greater than or equal to 1"),
        ("NEXTSTEP_CALIBRATION_ALERT", "-0.1", "greater than 0"),
        ("NEXTSTEP_POLICY", "bogus", "unknown policy 'bogus'"),
    ],
)
def test_a_refused_setting_is_one_clear_line(
    name: str,
    value: str,
    says: str,
    catalog_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NEXTSTEP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NEXTSTEP_CATALOG", str(catalog_path))  # restored after serve sets it
    monkeypatch.setenv(name, value)
    r = CliRunner().invoke(app, ["serve", "--catalog", str(catalog_path), "--port", "9"])
    assert r.exit_code == 2, r.output
    assert f"error: {name}={value!r}: " in r.output and says in r.output
    assert "Traceback" not in r.output
