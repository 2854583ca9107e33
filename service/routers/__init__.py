"""One router per resource, mounted in ``service.app.create_app``."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from service.flows import Reply
from service.problems import Problem
from service.store import Store

T = TypeVar("T")


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer (rendered as problem+json)."""
    return {code: {"model": Problem, "description": HTTPStatus(code).phrase} for code in codes}


def respond(reply: Reply) -> Response:
    """The exact bytes a flow rendered (idempotent replays are marked in a header)."""
    headers = {"Idempotent-Replayed": "true"} if reply.replayed else None
    return Response(
        reply.body, status_code=reply.status, media_type="application/json", headers=headers
    )


async def run_flow(store: Store, flow: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a flow inline on the event loop when the store is embedded (SQLite: each call is a
    few hundred microseconds of local work, less than the thread hop around it), in the thread
    pool when it talks to a server over the network (PostgreSQL), where a slow or unreachable
    database must not stall every other request."""
    if store.embedded:
        return flow(*args, **kwargs)
    return await run_in_threadpool(flow, *args, **kwargs)
