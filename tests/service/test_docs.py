"""``/docs`` and ``/redoc`` work without the internet: every script, stylesheet and icon they
load is served by the service itself from assets shipped in the package, with their licences."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.docs import ASSETS

_REF = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*['"]([^'"]+)['"]""")


def _references(html: str) -> list[str]:
    return [a or b for a, b in _REF.findall(html)]


@pytest.mark.parametrize(
    ("page", "asset"), [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")]
)
def test_doc_pages_load_only_local_assets(
    make_client: Callable[..., TestClient], page: str, asset: str
) -> None:
    client = make_client(api_keys="k1")  # open even when the API needs keys
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    refs = _references(html)
    assert any(ref.endswith(asset) for ref in refs), refs
    for ref in refs:
        assert ref.startswith("/"), f"{page} loads {ref} from outside the service"
        got = client.get(ref)
        assert got.status_code == 200, ref
        assert len(got.content) > 0
    assert "cdn" not in html.lower() and "fonts.googleapis" not in html
    assert '"validatorUrl": null' in html or page == "/redoc"


def test_assets_carry_their_licences() -> None:
    names = {p.name for p in Path(ASSETS).iterdir()}
    assert {"LICENSE-swagger-ui", "NOTICE-swagger-ui", "LICENSE-redoc"} <= names
    assert {"swagger-ui-bundle.js.LICENSE.txt", "redoc.standalone.js.LICENSE.txt"} <= names
    assert "Apache License" in (Path(ASSETS) / "LICENSE-swagger-ui").read_text()
    assert "MIT License" in (Path(ASSETS) / "LICENSE-redoc").read_text()


def test_response_fields_are_described_and_score_is_explained(
    make_client: Callable[..., TestClient],
) -> None:
    schemas = make_client().get("/openapi.json").json()["components"]["schemas"]
    for model in ("Decision", "CandidateOut", "OutcomeOut", "UserView"):
        props = schemas[model]["properties"]
        undescribed = [name for name, p in props.items() if not p.get("description")]
        assert not undescribed, (model, undescribed)
    score = schemas["CandidateOut"]["properties"]["score"]["description"]
    assert "planner" in score and "least effort" in score and "lower score" in score
    ready = schemas["Readiness"]["properties"]["status"]
    assert "degraded" in ready["description"]


def test_the_schema_lists_the_served_step_ids(make_client: Callable[..., TestClient]) -> None:
    from tests.service.helpers import CATALOG

    ids = [s["id"] for s in CATALOG["steps"]]
    schemas = make_client().get("/openapi.json").json()["components"]["schemas"]
    request = schemas["NextStepRequest"]
    (array,) = [o for o in request["properties"]["candidates"]["anyOf"] if o["type"] == "array"]
    assert array["items"]["enum"] == ids
    assert all(set(e["candidates"]) <= set(ids) for e in request["examples"])
    assert schemas["OrganicOutcomeRequest"]["properties"]["step"]["enum"] == ids
