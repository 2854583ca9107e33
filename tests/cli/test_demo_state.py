"""``nextstep demo`` on an existing home: another world is an error naming ``--fresh`` (never a
silent reuse of the old data and model), and ``--fresh`` removes exactly the demo's state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nextstep.cli.app import app
from nextstep.cli.demo import DEMO_INFO, DEMO_SEED, DemoError, ensure_demo, fresh_state


def _demo_home(home: Path, world: str, users: int) -> None:
    folder = home / "demo"
    folder.mkdir(parents=True)
    (folder / "events.csv").write_text("user_id,ts,step,outcome\n", encoding="utf-8")
    (folder / "catalog.yaml").write_text("[]\n", encoding="utf-8")
    info = {"world": world, "users": users, "seed": DEMO_SEED}
    (folder / DEMO_INFO).write_text(json.dumps(info), encoding="utf-8")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("NEXTSTEP_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("NEXTSTEP_DATABASE_URL", raising=False)
    return home


def test_another_world_on_an_existing_home_is_an_error_naming_fresh(home: Path) -> None:
    _demo_home(home, "ladder", 4000)
    with pytest.raises(DemoError, match=r"world 'ladder' with 4000 users, not world 'eager'"):
        ensure_demo("eager", 4000)
    with pytest.raises(DemoError, match="--fresh"):
        ensure_demo("ladder", 500)  # another size too
    result = CliRunner().invoke(app, ["demo", "--world", "eager"])
    assert result.exit_code == 2
    assert "--fresh" in result.stderr and "Traceback" not in result.output


def test_fresh_removes_only_the_demo_state(home: Path) -> None:
    _demo_home(home, "ladder", 4000)
    for name in ("mlflow.db", "mlflow.db-wal", "service.db", "notes.txt"):
        (home / name).write_text("x", encoding="utf-8")
    for name in ("mlartifacts/1", "model-cache/1", "mine"):
        (home / name).mkdir(parents=True)
    removed = {p.name for p in fresh_state(home)}
    assert removed == {
        "demo",
        "mlflow.db",
        "mlflow.db-wal",
        "service.db",
        "mlartifacts",
        "model-cache",
    }
    assert sorted(p.name for p in home.iterdir()) == ["mine", "notes.txt"]


def test_fresh_leaves_stores_configured_elsewhere_alone(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _demo_home(home, "ladder", 4000)
    (home / "mlflow.db").write_text("x", encoding="utf-8")
    (home / "service.db").write_text("x", encoding="utf-8")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    monkeypatch.setenv("NEXTSTEP_DATABASE_URL", "sqlite:///elsewhere-store.db")
    assert {p.name for p in fresh_state(home)} == {"demo"}
    assert (home / "mlflow.db").exists() and (home / "service.db").exists()


def test_make_clean_state_honours_nextstep_home(tmp_path: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[2]
    home = tmp_path / "elsewhere"
    _demo_home(home, "ladder", 4000)
    for name in ("mlflow.db", "service.db-wal", "notes.txt"):
        (home / name).write_text("x", encoding="utf-8")
    (home / "model-cache" / "1").mkdir(parents=True)
    out = subprocess.run(
        ["make", "-s", "clean-state", f"NEXTSTEP_HOME={home}"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt"]
    (home / "notes.txt").unlink()
    subprocess.run(["make", "-s", "clean-state", f"NEXTSTEP_HOME={home}"], cwd=root, check=True)
    assert not home.exists()  # an emptied home goes too
