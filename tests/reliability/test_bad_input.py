"""Bad input (issue 9 item 4 and 5): huge, deeply nested, non-UTF-8, NUL-laden, over-long and
mistyped requests. Each gets a 4xx ``application/problem+json`` without a traceback, never a
5xx, and the service keeps serving afterwards.

Complements ``tests/service/test_api.py::test_bad_requests_are_problems`` (one case per rule on
/v1/next-step) with the nasty variants on every write route and the user view.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.reliability.conftest import assert_clean_problem

NS, OUT, BATCH = "/v1/next-step", "/v1/outcomes", "/v1/next-step:batch"
CT = {"content-type": "application/json"}
LIMIT = 1 << 20  # Settings.max_body_bytes default
DEPTH = 10_000


def nested_obj(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def nested_list(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


CASES: list[tuple[str, str, bytes, dict[str, str], tuple[int, ...]]] = [
    # -- size
    ("2 MB body", NS, b'{"user_id": "' + b"x" * (2 * LIMIT) + b'"}', CT, (413,)),
    ("2 MB outcome", OUT, b" " * (2 * LIMIT), CT, (413,)),
    ("2 MB batch", BATCH, b'{"requests": [' + b'{"user_id":"u"},' * 140_000 + b"]}", CT, (413,)),
    (
        "batch of 1,001",
        BATCH,
        b'{"requests": [' + b",".join([b'{"user_id":"u"}'] * 1001) + b"]}",
        CT,
        (413, 422),
    ),
    # -- depth (10,000 levels: a recursive parser would blow its stack)
    (
        "deep context object",
        NS,
        b'{"user_id":"u","context":' + nested_obj(DEPTH) + b"}",
        CT,
        (400, 422),
    ),
    (
        "deep context list",
        NS,
        b'{"user_id":"u","context":{"k":' + nested_list(DEPTH) + b"}}",
        CT,
        (400, 422),
    ),
    (
        "deep outcome",
        OUT,
        b'{"decision_id":' + nested_obj(DEPTH) + b',"outcome":"accepted"}',
        CT,
        (400, 422),
    ),
    ("deep batch item", BATCH, b'{"requests":[' + nested_list(DEPTH) + b"]}", CT, (400, 422)),
    (
        "deep candidates",
        NS,
        b'{"user_id":"u","candidates":' + nested_list(DEPTH) + b"}",
        CT,
        (400, 422),
    ),
    # -- encodings
    ("latin-1 user id", NS, '{"user_id": "café"}'.encode("latin-1"), CT, (400, 422)),
    # UTF-16/32 with a BOM are decoded as JSON text (RFC 4627 detection): accepted, not garbled
    ("utf-16 body", NS, '{"user_id": "u"}'.encode("utf-16"), CT, (200, 400, 422)),
    (
        "utf-32 body",
        OUT,
        '{"user_id": "u", "step": "read_intro", "outcome": "declined"}'.encode("utf-32"),
        CT,
        (201, 400, 422),
    ),
    ("invalid utf-8 in key", NS, b'{"user_id": "u", "context": {"\xc3\x28": 1}}', CT, (400, 422)),
    (
        "overlong utf-8",
        OUT,
        b'{"decision_id": "\xc0\xaf", "outcome": "accepted"}',
        CT,
        (400, 422),
    ),
    (
        "lone surrogate in step",
        OUT,
        b'{"user_id":"u","step":"\\udc00","outcome":"accepted"}',
        CT,
        (422,),
    ),
    ("random bytes", BATCH, bytes(range(256)) * 4, CT, (400, 422)),
    # -- NUL bytes
    ("raw NUL in string", NS, b'{"user_id": "a\x00b"}', CT, (400, 422)),
    ("raw NUL outside strings", NS, b'{"user_id": "u"}\x00', CT, (400, 422)),
    (
        "escaped NUL in user id",
        OUT,
        b'{"user_id":"a\\u0000","step":"read_intro","outcome":"declined"}',
        CT,
        (422,),
    ),
    ("escaped NUL in context key", NS, b'{"user_id":"u","context":{"\\u0000":"v"}}', CT, (422,)),
    ("escaped NUL in context value", NS, b'{"user_id":"u","context":{"k":"\\u0000"}}', CT, (422,)),
    (
        "escaped NUL in decision id",
        OUT,
        b'{"decision_id":"\\u0000","outcome":"accepted"}',
        CT,
        (404, 422),
    ),
    ("escaped NUL in candidate", NS, b'{"user_id":"u","candidates":["\\u0000"]}', CT, (422,)),
    # -- long ids
    ("user id of 257", NS, b'{"user_id":"' + b"x" * 257 + b'"}', CT, (422,)),
    (
        "user id of 100,000",
        OUT,
        b'{"user_id":"' + b"y" * 100_000 + b'","step":"read_intro","outcome":"declined"}',
        CT,
        (422,),
    ),
    (
        "decision id of 100,000",
        OUT,
        b'{"decision_id":"' + b"d" * 100_000 + b'","outcome":"accepted"}',
        CT,
        (404, 422),
    ),
    (
        "context key of 100,000",
        NS,
        b'{"user_id":"u","context":{"' + b"k" * 100_000 + b'":1}}',
        CT,
        (422,),
    ),
    (
        "10,000 context keys",
        NS,
        b'{"user_id":"u","context":{' + b",".join(b'"k%d":1' % i for i in range(10_000)) + b"}}",
        CT,
        (422,),
    ),
    (
        "10,000 candidates",
        NS,
        b'{"user_id":"u","candidates":[' + b",".join([b'"read_intro"'] * 10_000) + b"]}",
        CT,
        (422,),
    ),
    # -- content types
    ("text/plain", NS, b'{"user_id":"u"}', {"content-type": "text/plain"}, (415,)),
    ("application/xml", OUT, b"<user_id>u</user_id>", {"content-type": "application/xml"}, (415,)),
    ("form", NS, b"user_id=u", {"content-type": "application/x-www-form-urlencoded"}, (415,)),
    (
        "multipart",
        BATCH,
        b"--b\r\n\r\nx\r\n--b--",
        {"content-type": "multipart/form-data; boundary=b"},
        (415,),
    ),
    ("empty content type", OUT, b'{"user_id":"u"}', {"content-type": ""}, (415,)),
    ("json content type, empty body", NS, b"", CT, (400, 422)),
    ("json, whitespace body", OUT, b"   \n", CT, (400, 422)),
    ("json scalar body", BATCH, b"12", CT, (422,)),
    ("json null body", NS, b"null", CT, (422,)),
    ("duplicate keys", NS, b'{"user_id":"u","user_id":{"x":1}}', CT, (422,)),
    ("huge number", NS, b'{"user_id":"u","ts":' + b"9" * 5000 + b"}", CT, (400, 422)),
    (
        "Infinity",
        OUT,
        b'{"user_id":"u","step":"read_intro","outcome":"declined","ts":Infinity}',
        CT,
        (400, 422),
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "statuses"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_hostile_body_is_a_clean_4xx(
    client: TestClient, path: str, body: bytes, headers: dict[str, str], statuses: tuple[int, ...]
) -> None:
    r = client.post(path, content=body, headers=headers)
    if r.status_code < 300 and r.status_code in statuses:
        assert r.json().get("user_id") == "u"  # decoded exactly, not mangled
    else:
        assert_clean_problem(r, *statuses)
    assert client.get("/healthz").status_code == 200
    assert client.post(NS, json={"user_id": "still-alive"}).status_code == 200


@pytest.mark.parametrize(
    ("raw_path", "statuses"),
    [
        ("/v1/users/" + "x" * 257, (422,)),
        ("/v1/users/" + "x" * 20_000, (422,)),  # user ids are at most 256 characters
        ("/v1/users/a%00b", (422,)),
        ("/v1/users/%ff%fe", (200,)),  # see test_odd_percent_encodings_decode_as_urls_do
        ("/v1/users/%", (200,)),
        ("/v1/users/u?ts=" + "9" * 5000, (422,)),
        ("/v1/users/u?ts=nan", (422,)),
    ],
)
def test_hostile_user_view_never_5xx(
    client: TestClient, raw_path: str, statuses: tuple[int, ...]
) -> None:
    r = client.get(raw_path)
    assert r.status_code in statuses, (r.status_code, r.text[:300])
    assert "Traceback" not in r.text and 'File "' not in r.text
    if r.status_code >= 400:
        assert_clean_problem(r, *statuses)


@pytest.mark.parametrize(
    ("raw_path", "user_id"),
    [
        ("/v1/users/%ff%fe", "\ufffd\ufffd"),  # bytes that are not UTF-8: replacement chars
        ("/v1/users/%", "%"),  # a "%" without two hex digits stays a "%"
    ],
)
def test_odd_percent_encodings_decode_as_urls_do(
    client: TestClient, raw_path: str, user_id: str
) -> None:
    """Path ids are percent-decoded as URLs are (WHATWG URL: UTF-8, replacement character for
    invalid bytes, a stray "%" kept): the view is of that user, not an error."""
    r = client.get(raw_path)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["user_id"] == user_id


def test_every_error_in_a_batch_is_a_problem_without_traceback(client: TestClient) -> None:
    items: list[Any] = [
        {"user_id": "ok"},
        {"user_id": ""},
        {"user_id": "u", "candidates": ["nope"]},
        {"user_id": "u", "context": {"k": {"n": 1}}},
        {"user_id": "a\x00b"},
        [1, 2],
    ]
    r = client.post(BATCH, json={"requests": items})
    # the schema refuses the whole batch, naming each item that breaks it: an empty id, a
    # nested context value, a NUL, a non-object ("nope" is a catalog question, not a schema one)
    body = assert_clean_problem(r, 422)
    assert {e["loc"][2] for e in body["errors"]} == {1, 3, 4, 5}
