"""Property-based API testing with schemathesis 4: every operation, every built-in check.

The checks include ``not_a_server_error`` (no 5xx for any input), status code, content type,
header and response schema conformance, and positive/negative data handling. Schema-valid
requests may still be semantically refused where the contract says so (an unknown candidate or
step is 422; an unknown decision 404; a conflicting outcome 409); the config below says which.

The schema is loaded eagerly from an app built at import (``schemathesis.pytest.from_fixture``
does not work with pytest 9); a module fixture runs the app's lifespan around the calls.
"""

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

from service.app import create_app
from service.settings import Settings
from tests.service.helpers import CATALOG

pytestmark = pytest.mark.slow  # about 30 s on two cores

CONFIG = """
[[operations]]
include-path-regex = "^/v1/(next-step|outcomes)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "404", "409", "422"]
"""

# Only a path at import (collection must not leave directories behind); made by the fixture.
_ROOT = Path(tempfile.gettempdir()) / f"nextstep-schemathesis-{uuid.uuid4().hex[:12]}"
APP = create_app(Settings(home=_ROOT / "home", catalog=_ROOT / "catalog.yaml", database_url=None))
# ``from_asgi`` would fetch /openapi.json through a client that runs the lifespan at import;
# the schema needs no lifespan, so take it from the app and point schemathesis at the app.
schema = schemathesis.openapi.from_dict(
    json.loads(json.dumps(APP.openapi())), config=schemathesis.Config.from_str(CONFIG)
)
schema.app = APP
schema.location = "/openapi.json"


@pytest.fixture(scope="module", autouse=True)
def _lifespan() -> Iterator[None]:
    _ROOT.mkdir(parents=True)
    (_ROOT / "catalog.yaml").write_text(yaml.safe_dump(CATALOG), encoding="utf-8")
    try:
        with TestClient(APP):  # store, migrations, catalog and deciders for the calls below
            yield
    finally:
        shutil.rmtree(_ROOT, ignore_errors=True)


@schema.parametrize()
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms(case: schemathesis.Case) -> None:
    case.call_and_validate()
