"""The shipped monitoring files: the Grafana dashboard loads in Grafana's dashboard schema,
every PromQL expression of the dashboard and the alert rules names only series the running
service exports, and compose provisions Prometheus and Grafana from these files."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.settings import Settings
from tests.service.helpers import CATALOG, fake_factory

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "nextstep.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
SCHEMAS = Path(__file__).resolve().parent / "grafana_schema"

# PromQL words that are not metric names: functions and aggregations are followed by "("
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
_STRING = re.compile(r'"(?:\\.|[^"\\])*"')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    e = _STRING.sub('""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range durations
    e = _LABEL_LIST.sub(" ", e)
    return {
        m.group(1)
        for m in _IDENT.finditer(e)
        if m.group(2) is None and m.group(1).lower() not in _KEYWORDS
    }


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (arm) (rate(a_total{x="y"}[5m])) / sum(rate(b_total[1h]))',
            {"a_total", "b_total"},
        ),
        ("histogram_quantile(0.9, sum by (le) (rate(h_bucket[1h]))) > 1e3", {"h_bucket"}),
        ("(abs(c) > on(job) group_left() t) and on(arm) (o >= 50)", {"c", "t", "o"}),
        ('-max(x{k="a b"}) or vector(0)', {"x"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dashboard["panels"]:
        yield p
        yield from p.get("panels", [])


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text("utf-8"))
    return [t["expr"] for p in _panels(dash) for t in p.get("targets", [])]


def _alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text("utf-8"))
    return [r for g in data["groups"] for r in g["rules"]]


def test_dashboard_loads_in_grafanas_schema() -> None:
    dash = json.loads(DASHBOARD.read_text("utf-8"))
    schema = json.loads((SCHEMAS / "dashboard.jsonschema.json").read_text("utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(dash)
    query = json.loads((SCHEMAS / "prometheus.jsonschema.json").read_text("utf-8"))
    ids = []
    for p in _panels(dash):
        ids.append(p["id"])
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, p["title"]  # Grafana's 24 columns
        for t in p.get("targets", []):
            jsonschema.Draft7Validator(query).validate(t)
            assert t["datasource"]["uid"] == "nextstep-prometheus"
    assert len(ids) == len(set(ids))
    assert dash["uid"] and dash["title"]


def test_the_schema_check_bites() -> None:
    dash = json.loads(DASHBOARD.read_text("utf-8"))
    schema = json.loads((SCHEMAS / "dashboard.jsonschema.json").read_text("utf-8"))
    broken = {**dash, "panels": [{**dash["panels"][1], "gridPos": {"x": "left"}}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(
            {k: v for k, v in dash.items() if k != "schemaVersion"}
        )


REFERENCE = {
    "columns": {"channel": {"kind": "category", "values": ["web"], "shares": [0.9, 0.1, 0.0]}}
}


class _Bundle:
    def __init__(self) -> None:
        self.meta = {"context_reference": REFERENCE}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every sample name the service's /metrics shows after some traffic: decisions (some
    explored), outcomes, requests with a context, a model with a drift reference."""
    tmp = tmp_path_factory.mktemp("exported")
    catalog = tmp / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(CATALOG), encoding="utf-8")
    base = fake_factory("3", {"read_intro": 0.8})

    def factory(cat: Any, arm: Any) -> Any:
        decider = base(cat, arm)
        decider.scorer.bundle = _Bundle()
        return decider

    settings = Settings(
        home=tmp / "home",
        catalog=catalog,
        database_url=f"sqlite:///{tmp / 'service.db'}",
        policy="greedy",
        exploration="epsilon=0.5",
    )
    with TestClient(create_app(settings, decider_factory=factory)) as client:
        for i in range(40):
            body = {"user_id": f"u{i}", "context": {"channel": "web"}}
            d = client.post("/v1/next-step", json=body).json()
            outcome = "accepted" if i % 2 else "declined"
            r = client.post(
                "/v1/outcomes", json={"decision_id": d["decision_id"], "outcome": outcome}
            )
            assert r.status_code == 201
        text = client.get("/metrics").text
    names = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert {"nextstep_offers_total", "nextstep_calibration_error"} <= names
    return names


def test_every_dashboard_query_names_an_exported_metric(exported: set[str]) -> None:
    exprs = _dashboard_exprs()
    assert len(exprs) >= 10
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= exported, (expr, names - exported)
    used = set().union(*(metric_names(e) for e in exprs))
    for watched in (
        "nextstep_calibration_error",
        "nextstep_calibration_offers",
        "nextstep_offers_total",
        "nextstep_outcome_delay_seconds_bucket",
        "nextstep_context_drift",
    ):
        assert watched in used


def test_alert_rules_parse_and_name_exported_metrics(exported: set[str]) -> None:
    rules = _alert_rules()
    assert {r["alert"] for r in rules} == {
        "NextstepCalibrationError",
        "NextstepContextDrift",
        "NextstepExplorationStopped",
        "NextstepOutcomeDelay",
    }
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r
        assert re.fullmatch(r"\d+[smhd]", r["for"])
        assert r["labels"]["severity"] in {"info", "warning", "critical"}
        assert r["annotations"]["summary"]
        assert r["expr"].count("(") == r["expr"].count(")")
        names = metric_names(r["expr"])
        assert names and names <= exported, (r["alert"], names - exported)
    calibration = next(r for r in rules if r["alert"] == "NextstepCalibrationError")["expr"]
    # the threshold is NEXTSTEP_CALIBRATION_ALERT (the service exports it), on >= 50 offers
    assert "nextstep_calibration_threshold" in calibration and ">= 50" in calibration


def test_compose_provisions_prometheus_and_grafana_from_these_files() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text("utf-8"))
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        image = services[name]["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), image
    prom_mounts = services["prometheus"]["volumes"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom_mounts
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prom_mounts
    prom = yaml.safe_load(PROMETHEUS.read_text("utf-8"))
    assert prom["rule_files"] == ["/etc/prometheus/alerts.yml"]
    (job,) = prom["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["nextstep:8000"]
    assert "--port" in services["nextstep"]["command"]
    assert (
        services["nextstep"]["command"][services["nextstep"]["command"].index("--port") + 1]
        == "8000"
    )
    graf = services["grafana"]
    assert (
        "./deploy/grafana/nextstep.json:/var/lib/grafana/dashboards/nextstep.json:ro"
        in graf["volumes"]
    )
    datasource = yaml.safe_load(compose["configs"]["grafana-datasource"]["content"])
    assert datasource["datasources"][0]["uid"] == "nextstep-prometheus"
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(compose["configs"]["grafana-dashboards"]["content"])
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    assert graf["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith(
        "${GRAFANA_ADMIN_PASSWORD:?"
    )
