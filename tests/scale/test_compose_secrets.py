"""``compose.yaml`` has no default secret: without each password or key variable, Docker
Compose refuses the file. There is no Docker daemon (or compose plugin) in the test
environment, so the file is parsed here and its ``${...}`` references resolved with Compose's
interpolation rules (``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``,
``${VAR?error}``, ``$$`` for a literal ``$``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
_REF = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
SECRETS = (
    "POSTGRES_PASSWORD",
    "NEXTSTEP_DB_PASSWORD",
    "MLFLOW_DB_PASSWORD",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_SERVICE_PASSWORD",
    "NEXTSTEP_API_KEYS",
    "NEXTSTEP_ADMIN_KEYS",
    "GRAFANA_ADMIN_PASSWORD",
)


class ComposeError(Exception):
    pass


def _interpolate(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m["name"], m["op"], m["arg"] or ""
        val = env.get(name)
        unset = val is None or (op is not None and op.startswith(":") and val == "")
        if op in (":?", "?") and unset:
            raise ComposeError(f"required variable {name} is missing a value: {arg}")
        if op in (":-", "-") and unset:
            return arg
        return val or ""

    return _REF.sub(one, value)


def _config(env: Mapping[str, str]) -> dict[str, Any]:
    return _interpolate(yaml.safe_load((ROOT / "compose.yaml").read_text("utf-8")), env)


FULL = {name: f"value-of-{name.lower()}" for name in SECRETS}


def test_compose_resolves_with_every_secret_set() -> None:
    config = _config(FULL)
    ns = config["services"]["nextstep"]["environment"]
    assert ns["NEXTSTEP_ADMIN_KEYS"] == FULL["NEXTSTEP_ADMIN_KEYS"]
    assert "value-of-nextstep_db_password@" in ns["NEXTSTEP_DATABASE_URL"]


@pytest.mark.parametrize("missing", SECRETS)
def test_compose_fails_without_each_secret(missing: str) -> None:
    env = {k: v for k, v in FULL.items() if k != missing}
    with pytest.raises(ComposeError, match=missing):
        _config(env)
    with pytest.raises(ComposeError, match=missing):  # set but empty counts as missing
        _config({**env, missing: ""})


def test_no_secret_has_a_default() -> None:
    text = (ROOT / "compose.yaml").read_text("utf-8")
    for m in _REF.finditer(text):
        name = m["name"] or ""
        if any(w in name for w in ("PASSWORD", "KEY", "SECRET", "TOKEN")):
            assert m["op"] == ":?", f"${{{name}}} must be required (:?), not {m['op']}"


def test_service_and_mlflow_use_separate_ordinary_database_roles() -> None:
    config = _config(FULL)
    services = config["services"]
    service_url = services["nextstep"]["environment"]["NEXTSTEP_DATABASE_URL"]
    mlflow_url = services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert service_url.startswith("postgresql+psycopg://nextstep_app:")
    assert mlflow_url.startswith("postgresql+psycopg://mlflow:")
    assert services["cli"]["environment"]["NEXTSTEP_DATABASE_URL"] == service_url
    superuser = services["postgres"]["environment"]["POSTGRES_USER"]
    assert superuser not in ("nextstep_app", "mlflow")
    init = config["configs"]["pg-init"]["content"]
    for role in ("nextstep_app", "mlflow"):
        assert re.search(rf"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE", init)
    assert "CREATE DATABASE nextstep OWNER nextstep_app" in init
    assert "CREATE DATABASE mlflow OWNER mlflow" in init
    assert '"$POSTGRES_USER"' in init  # `$$` became a shell variable, not compose's
    # no password on a command line (visible in the process list)
    for svc in services.values():
        command = svc.get("command") or []
        assert not any("value-of-" in str(arg) for arg in command), svc


def test_mlflow_runs_basic_auth_and_the_service_reads_with_its_own_account() -> None:
    from mlflow.server.auth.config import read_auth_config  # noqa: F401  (mlflow[auth] installed)

    config = _config(FULL)
    services = config["services"]
    args = services["mlflow"]["command"]
    assert args[args.index("--app-name") + 1] == "basic-auth"
    auth = config["configs"]["mlflow-auth"]["content"]
    assert "default_permission = READ" in auth
    assert (
        services["mlflow"]["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"]
        == FULL["MLFLOW_ADMIN_PASSWORD"]
    )
    ns = services["nextstep"]["environment"]
    assert ns["MLFLOW_TRACKING_USERNAME"] == "nextstep-service"
    assert ns["MLFLOW_TRACKING_PASSWORD"] == FULL["MLFLOW_SERVICE_PASSWORD"]
    assert services["cli"]["environment"]["MLFLOW_TRACKING_USERNAME"] == "admin"
    deps = services["nextstep"]["depends_on"]
    assert deps["mlflow-accounts"]["condition"] == "service_completed_successfully"
    accounts = services["mlflow-accounts"]
    assert accounts["entrypoint"] == ["python", "-c"]
    compile(accounts["command"][0], "mlflow-accounts", "exec")  # valid Python
    assert "nextstep-service" in accounts["command"][0]
