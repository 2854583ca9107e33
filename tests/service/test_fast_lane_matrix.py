"""Fast-lane parity beyond the basic requests: a real model with ``explain``, several served
arms and a shadow, the planner with concurrent misses (its batcher), PostgreSQL, a
Content-Length that lies and a client that goes away mid-body.

As in ``test_fast_lane``: two apps on their own stores, one with the lane and one without it
(every request through FastAPI's route); their answers must agree apart from decision ids, and
a spy says which requests the lane answered itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

from features.catalog import Catalog
from models.bundle import ModelScorer
from models.decide import Decider
from service.app import create_app
from service.experiments import Arm
from service.settings import Settings
from tests.service.conftest import PG_PARAM
from tests.service.helpers import StartedClients

T0 = 1_741_083_072.0
HOUR = 3600.0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from simulation.synthetic import simulated_bundle
    from simulation.worlds import load_world

    world = load_world("eager")
    bundle = simulated_bundle(world, 300, 3, params={"n_estimators": 20}, n_jobs=1)
    path = tmp_path_factory.mktemp("world") / "catalog.yaml"
    steps = {"steps": world.catalog.to_list()}
    path.write_text(yaml.safe_dump(steps, sort_keys=False), encoding="utf-8")
    return path, bundle


@pytest.fixture(params=["sqlite", PG_PARAM])
def two_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two empty stores of one back end: the lane app's and the route app's."""
    if request.param == "sqlite":
        yield tuple(f"sqlite:///{tmp_path / n / 'service.db'}" for n in ("lane", "route"))  # type: ignore[misc]
        return
    server = request.getfixturevalue("postgres_server")
    names = [server.create_database(), server.create_database()]
    try:
        yield server.url_for(names[0]), server.url_for(names[1])
    finally:
        for name in names:
            server.drop_database(name)


@pytest.fixture
def pair(
    make_settings: Callable[..., Settings],
    tiny_model: tuple[Path, Any],
    two_stores: tuple[str, str],
    tmp_path: Path,
) -> Iterator[Callable[..., tuple[TestClient, TestClient]]]:
    """``make(experiment=None, **settings)``: (with lane, route only) serving the tiny model."""
    catalog_path, bundle = tiny_model
    clients = StartedClients()

    def factory(catalog: Catalog, arm: Arm) -> Decider:
        scorer = ModelScorer(bundle, catalog)
        return Decider(catalog, arm.policy, scorer=scorer, model_version="1")

    def make(
        experiment: dict[str, Any] | None = None, **overrides: Any
    ) -> tuple[TestClient, TestClient]:
        if experiment is not None:
            overrides["experiments"] = tmp_path / "experiment.yaml"
            overrides["experiments"].write_text(yaml.safe_dump(experiment), encoding="utf-8")
        made = []
        for name, db in zip(("lane", "route"), two_stores, strict=True):
            settings = make_settings(db, catalog=catalog_path, **overrides)
            app = create_app(settings, decider_factory=factory)
            if name == "route":  # the same stack without the lane in front
                app.build_middleware_stack = lambda app=app: FastAPI.build_middleware_stack(app)
            made.append(clients.start(app, raise_server_exceptions=False))
        return made[0], made[1]

    yield make
    clients.stop()


def _body(r: Any) -> Any:
    data = r.json()
    if isinstance(data, dict):
        data.pop("decision_id", None)
    return data


def _same(a: Any, b: Any) -> None:
    assert (a.status_code, a.headers["content-type"]) == (b.status_code, b.headers["content-type"])
    assert _body(a) == _body(b)


def _shadow_rows(client: TestClient) -> list[tuple[Any, ...]]:
    store = client.app.state.store
    with store.read() as conn:
        rows = conn.exec_driver_sql(
            "SELECT d.user_id, s.arm, s.step FROM shadow_decisions s "
            "JOIN decisions d ON d.decision_id = s.decision_id ORDER BY d.user_id, d.ts"
        ).all()
    return [tuple(r) for r in rows]


EXPERIMENT = {
    "name": "matrix",
    "arms": [
        {"name": "plan", "policy": "planner", "weight": 1},
        {"name": "greedy", "policy": "greedy", "weight": 1},
        {"name": "ladder-shadow", "policy": "ladder", "shadow_of": "plan"},
    ],
}


def test_explain_arms_and_shadows_match_the_route(pair: Any, served: list[int]) -> None:
    lane, route = pair(EXPERIMENT)
    arms: set[str] = set()
    n = 0
    for u in range(10):
        for k in range(2):
            body = {
                "user_id": f"m{u}",
                "ts": T0 + (10 * u + k) * HOUR,
                "context": {"channel": "email" if u % 2 else "search"},
                "explain": bool((u + k) % 2),
            }
            a, b = lane.post("/v1/next-step", json=body), route.post("/v1/next-step", json=body)
            n += 1
            assert a.status_code == 200, a.text
            _same(a, b)
            got = a.json()
            arms.add(got["arm"])
            if body["explain"] and got["step"] is not None:
                assert got["explanation"]["step"] == got["step"]
                assert got["explanation"]["contributions"]
            else:
                assert got.get("explanation") is None
            if got["step"] is not None and k == 0:
                for client, d in ((lane, got), (route, b.json())):
                    r = client.post(
                        "/v1/outcomes",
                        json={"decision_id": d["decision_id"], "outcome": "accepted"},
                    )
                    assert r.status_code == 201
    assert arms == {"plan", "greedy"}  # both served arms answered through the lane
    assert len(served) == n
    shadows = _shadow_rows(lane)
    assert shadows == _shadow_rows(route)
    assert shadows and {arm for _, arm, _ in shadows} == {"ladder-shadow"}


def test_concurrent_planner_misses_through_the_lane_match_the_route(
    pair: Any, served: list[int]
) -> None:
    """Concurrent requests reach the planner's batcher from the lane; each answer is the one
    the route gives that request alone."""
    lane, route = pair(policy="planner", plan_batch_max=64)
    users = 12
    for u in range(users):  # histories of their own, so each final request is a planner miss
        for k in range(2):
            body = {"user_id": f"c{u}", "ts": T0 + u * 5 * HOUR + k * (u + 1) * HOUR}
            for client in (lane, route):
                d = client.post("/v1/next-step", json=body).json()
                if d["step"] is not None:
                    result = "accepted" if (u + k) % 3 else "declined"
                    r = client.post(
                        "/v1/outcomes", json={"decision_id": d["decision_id"], "outcome": result}
                    )
                    assert r.status_code == 201
    before = _sample(lane.get("/metrics").text, "nextstep_planner_pass_roots_sum")
    finals = [
        {"user_id": f"c{u}", "ts": T0 + 200 * HOUR + 37.0 * u, "context": {"device": "mobile"}}
        for u in range(users)
    ]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda b: lane.post("/v1/next-step", json=b), finals))
    for body, a in zip(finals, answers, strict=True):
        assert a.status_code == 200, a.text
        _same(a, route.post("/v1/next-step", json=body))
    assert len(served) == 2 * users + users
    after = _sample(lane.get("/metrics").text, "nextstep_planner_pass_roots_sum")
    assert after > before  # misses among them were planned through the batcher


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


# -- raw ASGI exchanges: what no well-behaved HTTP client sends ----------------------------------
async def _exchange(
    app: Any, chunks: list[bytes], headers: list[tuple[bytes, bytes]], disconnect: bool
) -> tuple[int | None, bytes]:
    """One POST /v1/next-step sent as ``chunks`` (then a disconnect, if asked); the status and
    body the app sent back (``None`` if it sent nothing)."""
    incoming: list[dict[str, Any]] = [
        {"type": "http.request", "body": c, "more_body": disconnect or i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    if disconnect:
        incoming.append({"type": "http.disconnect"})
    done = anyio.Event()
    status: list[int] = []
    body: list[bytes] = []

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/next-step", "raw_path": b"/v1/next-step",
        "root_path": "", "query_string": b"", "headers": headers,
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000), "state": {},
    }  # fmt: skip
    with anyio.fail_after(30):
        await app(scope, receive, send)
    return (status[0] if status else None), b"".join(body)


def _raw(client: TestClient, chunks: list[bytes], length: str, disconnect: bool = False) -> Any:
    headers = [(b"content-type", b"application/json"), (b"content-length", length.encode())]
    assert client.portal is not None  # the app's own event loop, where its lifespan ran
    return client.portal.call(_exchange, client.app, chunks, headers, disconnect)


def _decisions(client: TestClient) -> int:
    with client.app.state.store.read() as conn:
        return int(conn.exec_driver_sql("SELECT COUNT(*) FROM decisions").scalar_one())


@pytest.mark.parametrize(
    ("chunks", "length"),
    [
        pytest.param([b'{"user_id": "short"}'], "5", id="longer-than-declared"),
        pytest.param([b'{"user_id": "long"}'], "500", id="shorter-than-declared"),
        pytest.param([b'{"user_id": "x"}'], "abc", id="not-a-number"),
        pytest.param([b'{"user_id":', b' "two-parts"}'], "3", id="chunked-longer"),
    ],
)
def test_a_lying_content_length_gets_the_routes_answer(
    pair: Any, chunks: list[bytes], length: str
) -> None:
    lane, route = pair(policy="greedy")
    a = _raw(lane, chunks, length)
    b = _raw(route, chunks, length)
    assert a[0] == b[0] and a[0] is not None and a[0] < 500, (a, b)
    if a[0] == 200:
        import orjson

        ja, jb = orjson.loads(a[1]), orjson.loads(b[1])
        ja.pop("decision_id")
        jb.pop("decision_id")
        assert ja == jb
    else:
        assert a[1] == b[1]
    assert _decisions(lane) == _decisions(route)


def test_a_client_gone_mid_body_gets_nothing_and_leaves_nothing(
    pair: Any, served: list[int]
) -> None:
    lane, route = pair(policy="greedy")
    for client in (lane, route):
        status, _ = _raw(client, [b'{"user_id": "gone", "con'], "200", disconnect=True)
        assert status is None  # nobody to answer
        assert _decisions(client) == 0  # and no decision was made for a request never received
        ok = client.post("/v1/next-step", json={"user_id": "after"})
        assert ok.status_code == 200  # the app serves on
    assert len(served) == 1  # only the complete request reached the lane's handler
