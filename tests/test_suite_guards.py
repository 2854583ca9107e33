"""The suite's own guards bite: PostgreSQL tests cannot pass silently in CI, the cluster's
folder works under a private TMPDIR, and a test that leaves a process running fails the run."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests import conftest as root

REPO = Path(__file__).resolve().parent.parent


def test_an_unavailable_server_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        root._unavailable("no initdb")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no initdb"):
        root._unavailable("no initdb")


def test_missing_binaries_fail_the_postgres_fixture_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(root, "_pg_bin", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="not installed"):
        root.PostgresServer()


@pytest.mark.skipif(os.geteuid() != 0, reason="the postgres user is only used as root")
def test_cluster_folder_is_reachable_by_postgres_under_a_private_tmpdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = Path(tempfile.mkdtemp(dir=tmp_path))  # 0700, owned by root, as `mktemp -d` makes
    assert private.stat().st_mode & 0o777 == 0o700
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    server = object.__new__(root.PostgresServer)
    server.prefix = ["runuser", "-u", "postgres", "--"]
    parent = server._parent_dir()
    assert parent != str(private)
    reach = subprocess.run([*server.prefix, "test", "-x", parent], capture_output=True)
    assert reach.returncode == 0


def test_a_process_left_running_fails_the_session(tmp_path: Path) -> None:
    (tmp_path / "test_leak.py").write_text(
        "import subprocess\ndef test_leaks():\n    subprocess.Popen(['sleep', '120'])\n",
        encoding="utf-8",
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "-p", "no:xdist", "--rootdir", str(tmp_path), "--basetemp", str(tmp_path / "inner"),
         str(tmp_path / "test_leak.py")],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert run.returncode != 0, run.stdout
    assert "left child processes running" in run.stdout, run.stdout
    assert "sleep 120" in run.stdout


def test_every_test_has_a_time_limit(request: pytest.FixtureRequest) -> None:
    """pyproject's ``timeout`` covers every test; slow and e2e ones get the longer limit."""
    assert float(request.config.getini("timeout")) == 300
    for item in request.session.items:
        if item.get_closest_marker("slow") or item.get_closest_marker("e2e"):
            marker = item.get_closest_marker("timeout")
            assert marker is not None and marker.args[0] >= root.SLOW_TIMEOUT, item.nodeid
