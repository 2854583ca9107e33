"""Hypothesis fuzzing of the write endpoints through the ASGI app (issue 9 item 4): random JSON
values and near-valid structures for ``POST /v1/next-step``, ``/v1/outcomes`` and
``/v1/next-step:batch``, and raw bytes. Only 2xx or 4xx may come back, never a 5xx; every 4xx is
problem+json without a traceback. Deterministic (``derandomize``); examples counted in
``EXAMPLES`` by path and status class, which the last test checks."""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.conftest import assert_clean_problem
from tests.service.helpers import CATALOG

pytestmark = pytest.mark.xdist_group("api-fuzz")  # one worker: the count test sees all
N = int(os.environ.get("NEXTSTEP_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=N,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
EXAMPLES: Counter[str] = Counter()
STEPS = [s["id"] for s in CATALOG["steps"]]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.sampled_from(["", "\x00", "\ud800", "🚀", "'; DROP TABLE decisions; --", "1e999"])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
user_ids = st.text(min_size=0, max_size=300) | json_values
timestamps = (
    st.none()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers()
    | st.sampled_from(["2025-03-04T10:11:12Z", "2025-13-40T99:99:99Z", "now", "1741083072"])
)
contexts = st.dictionaries(st.text(max_size=20), scalars, max_size=6) | json_values
candidate_lists = st.lists(st.sampled_from(STEPS) | st.text(max_size=12), max_size=6) | json_values


def _opt(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts with each field present or absent, plus occasionally an unknown field."""
    return st.fixed_dictionaries({}, optional={**fields, "extra": json_values})


next_step_bodies = _opt(
    user_id=user_ids, context=contexts, ts=timestamps, candidates=candidate_lists
)
# Valid bodies with random contents, so that part of each run reaches the handlers.
_safe_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=40,
)
valid_next_step = st.fixed_dictionaries(
    {"user_id": _safe_text},
    optional={
        "context": st.dictionaries(
            _safe_text, st.none() | st.booleans() | st.integers(-1000, 1000) | _safe_text,
            max_size=4,
        ),
        "ts": st.sampled_from(["2025-03-04T10:11:12Z", "2025-03-05T00:00:00+02:00"]),
        "candidates": st.lists(st.sampled_from(STEPS), min_size=1, max_size=3, unique=True),
    },
)  # fmt: skip


def _send(client: TestClient, path: str, body: Any, *, raw: bytes | None = None) -> None:
    raw_only = raw is not None
    if raw is None:
        try:
            raw = json.dumps(body).encode("utf-8", "surrogatepass")
        except (ValueError, OverflowError):  # numbers JSON cannot spell
            raw = repr(body).encode("utf-8", "surrogatepass")
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code < 500, (path, raw[:300], r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert_clean_problem(r)
    EXAMPLES[f"{'raw ' if raw_only else ''}{path} {r.status_code // 100}xx"] += 1


@pytest.fixture
def decision_ids(client: TestClient) -> list[str]:
    return [
        client.post("/v1/next-step", json={"user_id": f"fz{i}"}).json()["decision_id"]
        for i in range(8)
    ]


@FUZZ
@given(body=valid_next_step | next_step_bodies | json_values)
def test_fuzz_next_step_never_5xx(client: TestClient, body: Any) -> None:
    _send(client, "/v1/next-step", body)


@FUZZ
@given(data=st.data())
def test_fuzz_outcomes_never_5xx(
    client: TestClient, decision_ids: list[str], data: st.DataObject
) -> None:
    outcome = st.sampled_from(["accepted", "declined", "dropped"]) | json_values
    valid = st.fixed_dictionaries(
        {
            "decision_id": st.sampled_from(decision_ids),
            "outcome": st.sampled_from(["accepted", "declined", "dropped"]),
        }
    )
    body = data.draw(
        valid
        | _opt(
            decision_id=st.sampled_from(decision_ids) | st.text(max_size=40) | json_values,
            outcome=outcome,
            ts=timestamps,
            context=contexts,
        )
        | _opt(
            user_id=user_ids,
            step=st.sampled_from(STEPS) | st.text(max_size=12) | json_values,
            outcome=outcome,
            ts=timestamps,
            context=contexts,
        )
        | json_values
    )
    _send(client, "/v1/outcomes", body)


@FUZZ
@given(
    body=st.fixed_dictionaries({"requests": st.lists(valid_next_step, min_size=1, max_size=4)})
    | st.fixed_dictionaries({"requests": st.lists(next_step_bodies | json_values, max_size=6)})
    | json_values
)
def test_fuzz_batch_never_5xx(client: TestClient, body: Any) -> None:
    _send(client, "/v1/next-step:batch", body)


@settings(FUZZ, max_examples=max(1, N // 3))
@given(raw=st.binary(max_size=300), path=st.sampled_from(["/v1/next-step", "/v1/outcomes"]))
def test_fuzz_raw_bytes_never_5xx(client: TestClient, raw: bytes, path: str) -> None:
    _send(client, path, None, raw=raw)


def test_zz_fuzzers_reached_both_the_handlers_and_the_validation() -> None:
    """Runs last in this module on its worker: each JSON fuzzer that ran had some examples
    accepted (2xx: it reached the handler, so "never 5xx" covered real work) and some refused
    (4xx: it reached validation); the raw-bytes one had some refused. Prints the counts."""
    print(f"fuzz examples sent: {sum(EXAMPLES.values())} {dict(sorted(EXAMPLES.items()))}")
    fuzzed = {key.rsplit(" ", 1)[0] for key in EXAMPLES}
    if not fuzzed:
        pytest.skip("no fuzzer of this module ran in this process (deselected)")
    for path in fuzzed:
        if not path.startswith("raw "):
            assert EXAMPLES[f"{path} 2xx"] > 0, (path, dict(EXAMPLES))
        assert EXAMPLES[f"{path} 4xx"] > 0, (path, dict(EXAMPLES))
