"""The OpenAPI document describes the served catalog: schemathesis, with every check and no
allowance for refused schema-valid requests on next-step, runs clean against a service whose
step ids differ from the demo's."""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
import yaml
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from features.catalog import Catalog
from service.app import create_app
from service.docs import with_catalog
from service.settings import Settings

pytestmark = pytest.mark.slow

STEPS = [
    {"id": "open_guide", "stage": "start", "effort": 1},
    {"id": "try_sandbox", "stage": "deliver", "effort": 2, "requires": ["open_guide"]},
    {"id": "book_call", "stage": "convert", "effort": 6},
]
# outcomes: an unknown decision is 404, a second outcome 409 (schema-valid, refused by contract).
# batch: an item naming an unknown step is answered by its own problem inside a 200 (one
# response per request, by contract), so that negative case is not a whole-request 4xx.
CONFIG = """
[[operations]]
include-path-regex = "^/v1/outcomes$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "404", "409"]

[[operations]]
include-path-regex = "^/v1/next-step:batch$"
checks.negative_data_rejection.enabled = false
"""

# Only a path at import (collection must not leave directories behind); made by the fixture.
_ROOT = Path(tempfile.gettempdir()) / f"nextstep-st-catalog-{uuid.uuid4().hex[:12]}"
APP = create_app(Settings(home=_ROOT / "home", catalog=_ROOT / "catalog.yaml", database_url=None))
# What the started service serves (test_docs checks the served document has these enums):
# FastAPI's schema with the catalog's step ids, built here without starting the app.
schema = schemathesis.openapi.from_dict(
    with_catalog(json.loads(json.dumps(APP.openapi())), Catalog.from_data(STEPS)),
    config=schemathesis.Config.from_str(CONFIG),
)
schema.app = APP
schema.location = "/openapi.json"


@pytest.fixture(scope="module", autouse=True)
def _lifespan() -> Iterator[None]:
    _ROOT.mkdir(parents=True)
    (_ROOT / "catalog.yaml").write_text(yaml.safe_dump({"steps": STEPS}), encoding="utf-8")
    try:
        with TestClient(APP):
            yield
    finally:
        shutil.rmtree(_ROOT, ignore_errors=True)


@schema.include(path_regex=r"^/v1/(next-step|next-step:batch|outcomes)$").parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_on_another_catalog(case: schemathesis.Case) -> None:
    case.call_and_validate()
