"""``nextstep export``: one row per acknowledged outcome, decision columns and context carried
over, organic outcomes with null decision columns, and the documented no-response rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from features.catalog import load_catalog
from features.events import load_events
from loop.export import ExportError, export_command, export_log, resolve_catalog
from service.app import create_app
from service.settings import Settings
from tests.service.helpers import CATALOG, fake_factory

T0 = 1_750_000_000.0
H = 3600.0


@pytest.fixture
def served(tmp_path: Path) -> tuple[str, Path]:
    cat = tmp_path / "catalog.yaml"
    cat.write_text(yaml.safe_dump(CATALOG), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'store' / 'service.db'}"
    settings = Settings(home=tmp_path / "home", catalog=cat, database_url=url, policy="greedy")
    with TestClient(create_app(settings, decider_factory=fake_factory())) as client:

        def ask(user: str, ts: float) -> dict:
            body = {"user_id": user, "ts": ts, "context": {"channel": "email", "device": "web"}}
            r = client.post("/v1/next-step", json=body)
            assert r.status_code == 200
            return r.json()

        a = ask("a", T0)
        assert (
            client.post(
                "/v1/outcomes", json={"decision_id": a["decision_id"], "outcome": "accepted"}
            ).status_code
            == 201
        )
        b = ask("b", T0 + H)
        assert (
            client.post(
                "/v1/outcomes",
                json={"decision_id": b["decision_id"], "outcome": "declined", "ts": T0 + 2 * H},
            ).status_code
            == 201
        )
        ask("c", T0 + 2 * H)  # never answered: old enough for the no-response rule
        ask("d", T0 + 100 * H)  # never answered: still pending
        organic = {
            "user_id": "e",
            "step": "read_intro",
            "outcome": "accepted",
            "ts": T0 + 100 * H,
            "context": {"channel": "sms"},
        }
        assert client.post("/v1/outcomes", json=organic).status_code == 201
    return url, cat


def test_export_one_row_per_outcome(
    served: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, cat = served
    catalog = load_catalog(cat)
    res = export_log(catalog, url=url)
    f = res.log.frame
    assert res.outcomes == 3 and len(f) == 3 and res.no_response == 0 and res.pending == 2
    assert list(f["user_id"]) == ["a", "b", "e"]
    decided = f[f["decision_id"].notna()]
    assert (decided["policy"] == "greedy").all() and (decided["propensity"] > 0).all()
    assert set(decided["channel"]) == {"email"} and set(decided["device"]) == {"web"}
    e = f[f["user_id"] == "e"].iloc[0]
    assert e["decision_id"] is None and e["policy"] is None and e["channel"] == "sms"
    assert float(f[f["user_id"] == "b"]["ts"].iloc[0]) == T0 + 2 * H
    # written and read back through the contract's loader
    out = tmp_path / "export.csv"
    monkeypatch.setenv("NEXTSTEP_DATABASE_URL", url)
    export_command(out, catalog=cat)
    export_command(tmp_path / "since.parquet", since="1750007200", catalog=cat)
    assert load_events(out, catalog).n_rows == 3
    assert list(load_events(tmp_path / "since.parquet", catalog).frame["user_id"]) == ["b", "e"]


def test_no_response_rule(served: tuple[str, Path]) -> None:
    url, cat = served
    catalog = load_catalog(cat)
    res = export_log(catalog, url=url, no_response="declined", wait_hours=72)
    f = res.log.frame
    assert res.no_response == 1 and len(f) == 4
    c = f[f["user_id"] == "c"].iloc[0]
    assert c["outcome"] == "declined" and c["ts"] == T0 + 2 * H and c["decision_id"]
    # a longer wait window keeps every unanswered decision pending
    assert export_log(catalog, url=url, no_response="declined", wait_hours=1000).no_response == 0
    with pytest.raises(ExportError):
        export_log(catalog, url=url, no_response="maybe")


def test_the_contract_command_needs_no_catalog(
    served: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``nextstep export --out F``: the store remembers the catalog the service served."""
    from typer.testing import CliRunner

    from nextstep.cli.app import app

    url, cat = served
    catalog = load_catalog(cat)
    cat.unlink()  # not read again: the store has it
    monkeypatch.delenv("NEXTSTEP_CATALOG", raising=False)
    monkeypatch.setenv("NEXTSTEP_DATABASE_URL", url)
    out = tmp_path / "export.csv"
    result = CliRunner().invoke(app, ["export", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert load_events(out, catalog).n_rows == 3
    assert resolve_catalog(None, url) == catalog


def test_the_last_served_catalog_wins_and_a_given_one_overrides(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    url, cat = served
    changed = [dict(s, title=f"new {s['id']}") for s in CATALOG["steps"]]
    cat2 = tmp_path / "catalog2.yaml"
    cat2.write_text(yaml.safe_dump({"steps": changed}), encoding="utf-8")
    settings = Settings(home=tmp_path / "home", catalog=cat2, database_url=url, policy="greedy")
    with TestClient(create_app(settings, decider_factory=fake_factory())):
        pass
    assert resolve_catalog(None, url) == load_catalog(cat2)
    assert resolve_catalog(cat, url) == load_catalog(cat)
    with TestClient(create_app(Settings(home=tmp_path / "home", catalog=cat, database_url=url))):
        pass  # the first catalog again: served last now
    assert resolve_catalog(None, url) == load_catalog(cat)


def test_a_store_without_a_recorded_catalog_says_what_to_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEXTSTEP_CATALOG", raising=False)
    with pytest.raises(ExportError, match="pass --catalog or set NEXTSTEP_CATALOG"):
        resolve_catalog(None, f"sqlite:///{tmp_path / 'none.db'}")
