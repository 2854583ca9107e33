"""Shared fixtures: a throwaway PostgreSQL server for tests marked ``postgres``.

The server is started once per test session (per xdist worker; group PostgreSQL tests with
``pytest.mark.xdist_group("postgres")`` and run ``--dist loadgroup`` so only one worker starts
one) with ``initdb``/``pg_ctl`` from the machine's PostgreSQL binaries. Those refuse to run as
root, so as root they run as the ``postgres`` user via ``runuser``. Each test that wants a clean
database asks for ``postgres_db`` and gets a fresh ``CREATE DATABASE``, dropped afterwards.

Where the server cannot start, PostgreSQL tests skip on a developer's machine but fail in CI
(``CI=true``): a CI run that skipped them all would pass without having tested PostgreSQL.

The suite also guards itself: every test has a time limit (``timeout`` in pyproject, more for
``slow`` and ``e2e`` tests), every store a test opens is disposed when it ends, and the session
fails if a test left a child process running.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def _pg_bin(name: str) -> str | None:
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
        reverse=True,
    )
    return candidates[0] if candidates else shutil.which(name)


def in_ci() -> bool:
    """``CI`` set to a true value, as CI services do."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _unavailable(reason: str) -> None:
    """Skip the test on a developer's machine; fail it in CI, where it must run."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: PostgreSQL tests must run here, not skip)", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A PostgreSQL cluster in a temporary directory, reachable on 127.0.0.1:``port``."""

    def __init__(self) -> None:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            _unavailable("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        assert initdb is not None and pg_ctl is not None
        self.pg_ctl = pg_ctl
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                _unavailable("as root, initdb runs as the 'postgres' user, which does not exist")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.base = Path(tempfile.mkdtemp(prefix="nextstep-pg-", dir=self._parent_dir()))
        self.data = self.base / "data"
        self.sock = self.base / "sock"
        self.log = self.base / "server.log"
        try:
            self.sock.mkdir()
            if self.prefix:
                shutil.chown(self.base, "postgres", "postgres")
                shutil.chown(self.sock, "postgres", "postgres")
            self.port = _free_port()
            self._run(
                initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                "--locale=C", "--no-sync",
            )  # fmt: skip
            self.start()
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            if isinstance(detail, bytes):
                detail = detail.decode(errors="replace")
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            self.destroy()
            pytest.fail(
                f"cannot start PostgreSQL in {self.base}: {exc}\n{detail}\n{log}", pytrace=False
            )

    def _parent_dir(self) -> str:
        """Where the cluster's folder goes: TMPDIR, unless ``postgres`` (as root) cannot reach
        it, as with the 0700 folder ``mktemp -d`` makes; then the first system temporary folder
        it can reach."""
        candidates = [tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"]
        if not self.prefix:
            return candidates[0]
        for folder in candidates:
            ok = subprocess.run(
                [*self.prefix, "test", "-d", folder, "-a", "-x", folder],
                capture_output=True,
                timeout=30,
            )
            if ok.returncode == 0:
                return folder
        _unavailable(f"no temporary folder the postgres user can use among {candidates}")
        raise AssertionError  # unreachable: _unavailable raises

    def _run(self, *args: str) -> None:
        subprocess.run([*self.prefix, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
            "-o", opts, "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, dbname: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().split()[0])
        return None

    def destroy(self) -> None:
        """Stop the server (killing it if ``pg_ctl stop`` fails) and remove its folder."""
        pid = self._postmaster_pid()
        with contextlib.suppress(Exception):
            self.stop()
        if pid is not None:
            import psutil

            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if "postgres" in proc.name():
                    proc.kill()
                    proc.wait(timeout=30)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_db(postgres_server: PostgresServer) -> Iterator[str]:
    """A SQLAlchemy URL of a fresh, empty database on the session's server."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url_for(name)
    finally:
        postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres`` of the session's server."""
    return postgres_server.url


# -- guards for the whole suite ----------------------------------------------------------------
SLOW_TIMEOUT = 900  # seconds for tests marked slow or e2e; pyproject's ``timeout`` for the rest

# Helpers that a library starts once per process and keeps for its life, not a test's leftovers.
_LONG_LIVED = ("multiprocessing.resource_tracker", "multiprocessing.forkserver", "loky")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A generous time limit for slow and end-to-end tests that do not set their own."""
    for item in items:
        if item.get_closest_marker("timeout") is None and (
            item.get_closest_marker("slow") or item.get_closest_marker("e2e")
        ):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))


def _children() -> dict[int, str]:
    """Live descendants of this process (zombies and long-lived library helpers left out)."""
    import psutil

    found: dict[int, str] = {}
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(proc.cmdline()) or proc.name()
            if not any(marker in cmd for marker in _LONG_LIVED):
                found[proc.pid] = cmd
    return found


@pytest.fixture(scope="session", autouse=True)
def _no_process_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail the run if the tests leave a child process running (a server a failed test forgot
    to stop, a worker pool never closed). Also keeps Dask's scratch folders in the session's
    temporary folder instead of TMPDIR. Set up first, so torn down after every other fixture."""
    before = set(_children())
    scratch = tmp_path_factory.mktemp("dask-scratch")
    old_scratch = os.environ.get("DASK_TEMPORARY_DIRECTORY")
    os.environ["DASK_TEMPORARY_DIRECTORY"] = str(scratch)
    if "dask" in sys.modules:  # read its config at import: tell it too
        import dask

        dask.config.set({"temporary-directory": str(scratch)})
    try:
        yield
    finally:
        if old_scratch is None:
            os.environ.pop("DASK_TEMPORARY_DIRECTORY", None)
        else:
            os.environ["DASK_TEMPORARY_DIRECTORY"] = old_scratch
    deadline = time.monotonic() + 5  # a process told to stop may take a moment to exit
    stray = {pid: cmd for pid, cmd in _children().items() if pid not in before}
    while stray and time.monotonic() < deadline:
        time.sleep(0.2)
        stray = {pid: cmd for pid, cmd in _children().items() if pid in stray}
    if stray:
        import psutil

        for pid in stray:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        listing = "\n".join(f"  {pid}: {cmd[:200]}" for pid, cmd in sorted(stray.items()))
        pytest.fail(f"the tests left child processes running (now killed):\n{listing}")


@pytest.fixture(autouse=True)
def _stores_disposed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every ``Store`` a test opens is disposed when the test ends, passed or failed: its
    connections, its checkpointer and group-commit threads go with it, instead of living on
    until garbage collection (stores of longer-lived fixtures are opened before this one and
    left to them)."""
    from service.store import Store

    opened: list[Store] = []
    real_init = Store.__init__

    def tracked(self: Store, *args: object, **kwargs: object) -> None:
        real_init(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(Store, "__init__", tracked)
    yield
    for store in opened:
        with contextlib.suppress(Exception):  # already disposed, or its database is gone
            store.dispose()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Remove pytest's per-user folder in TMPDIR when it is left empty (after a passing run
    pytest removes its numbered folders, not their parent), so a run leaves TMPDIR as it was."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = getattr(factory, "_basetemp", None)
    if basetemp is None or getattr(factory, "_given_basetemp", None) is not None:
        return
    root = Path(basetemp).parent
    if root.name.startswith("pytest-of-"):
        with contextlib.suppress(OSError):
            root.rmdir()  # only when empty


@pytest.fixture(autouse=True)
def _mlflow_environment_restored() -> Iterator[None]:
    """MLflow writes ``MLFLOW_TRACKING_URI``/``MLFLOW_REGISTRY_URI`` into ``os.environ`` when a
    tracking or registry URI is set; left there, the next test in the same worker (and every
    subprocess it starts) would talk to this test's registry. Each test ends with the
    ``MLFLOW_*`` environment it started with."""
    before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    yield
    for k in [k for k in os.environ if k.startswith("MLFLOW_")]:
        if k not in before:
            del os.environ[k]
    os.environ.update(before)


@pytest.fixture
def nextstep_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A throwaway ``NEXTSTEP_HOME``: its own SQLite MLflow registry, nothing from the shell."""
    home = tmp_path / "home"
    monkeypatch.setenv("NEXTSTEP_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home
