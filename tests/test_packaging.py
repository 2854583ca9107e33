"""Packaging conventions a user relies on: ``nextstep --version``, ``python -m nextstep``, the
licence in the metadata and the tree, ``py.typed`` markers, and no upper cap on Python."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

from typer.testing import CliRunner

from nextstep.cli.app import app

ROOT = Path(__file__).resolve().parent.parent
# the top-level packages, one room each (docs/design.md, "Layout")
ROOMS = [
    "features",
    "models",
    "evaluation",
    "training",
    "simulation",
    "service",
    "loop",
    "nextstep",
]


def test_version_option() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"nextstep {version('nextstep')}"


def test_python_dash_m_runs_the_same_command_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nextstep", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"nextstep {version('nextstep')}"
    bad = subprocess.run(
        [sys.executable, "-m", "nextstep", "validate", "--events", "nope.csv", "--catalog", "x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")


def test_licence_python_versions_and_typing_markers() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert meta["license"] == "Apache-2.0"
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").lstrip().startswith("Apache License")
    assert meta["requires-python"] == ">=3.11"
    lock = tomllib.loads((ROOT / "uv.lock").read_text(encoding="utf-8"))
    assert lock["requires-python"] == ">=3.11"  # the lock resolves for 3.12 and 3.13 too
    packages = ROOMS
    wheel = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["hatch"]
    assert sorted(wheel["build"]["targets"]["wheel"]["packages"]) == sorted(packages)
    for pkg in packages:
        assert (ROOT / pkg / "py.typed").is_file(), pkg


def test_every_room_is_built_linted_and_copied_into_the_image() -> None:
    """A top-level package missing from the wheel, the import contracts or the image's COPY
    lines would install, lint or run without it."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]
    assert sorted(tool["importlinter"]["root_packages"]) == sorted(ROOMS)
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert on_disk == set(ROOMS)
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
    copied = {line.split()[1] for line in dockerfile if line.startswith("COPY ") and "./" in line}
    assert set(ROOMS) <= copied
