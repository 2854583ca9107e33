"""End to end: the real ``nextstep serve`` process over HTTP (no model: ladder mode)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import yaml

from tests.service.helpers import CATALOG, ServerProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(CATALOG), encoding="utf-8")
    # exploration off: the test asserts the ladder's own choices
    proc = ServerProcess(
        tmp_path, catalog, NEXTSTEP_HOME=str(tmp_path / "home"), NEXTSTEP_EXPLORATION="none"
    )
    try:
        proc.wait_ready()
        yield proc.base
    finally:
        proc.stop()
    assert (tmp_path / "home" / "service.db").exists()


def test_next_step_outcome_user_over_http(server: str) -> None:
    uid = "e2e/1%2F"  # a slash and a percent sign survive the real server's path decoding
    with httpx.Client(base_url=server, timeout=10) as http:
        ready = http.get("/readyz").json()
        assert ready["model"] is None and ready["policy"] == "ladder"
        d = http.post("/v1/next-step", json={"user_id": uid, "ts": "2025-03-04T10:11:12Z"})
        assert d.status_code == 200, d.text
        body = d.json()
        assert body["step"] == "read_intro" and body["policy"] == "ladder"
        assert body["model_version"] is None
        r = http.post(
            "/v1/outcomes", json={"decision_id": body["decision_id"], "outcome": "accepted"}
        )
        assert r.status_code == 201, r.text
        again = http.post(
            "/v1/outcomes", json={"decision_id": body["decision_id"], "outcome": "declined"}
        )
        assert again.status_code == 409
        assert again.headers["content-type"].startswith("application/problem+json")
        user = http.get(f"/v1/users/{quote(uid, safe='')}")
        assert user.status_code == 200, user.text
        view = user.json()
        assert view["user_id"] == uid and view["accepted"] == ["read_intro"]
        assert view["history"][0]["decision_id"] == body["decision_id"]
        nxt = http.post("/v1/next-step", json={"user_id": uid}).json()
        assert nxt["step"] in {"watch_clip", "create_account"}
        assert http.get("/metrics").text.count("nextstep_decisions_total{") >= 2
        big = http.post(
            "/v1/next-step",
            content=b"{" + b" " * (2 << 20) + b"}",
            headers={"content-type": "application/json"},
        )
        assert big.status_code == 413
