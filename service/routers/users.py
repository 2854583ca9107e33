"""``GET /v1/users/{user_id}``."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query
from starlette.responses import Response

from service import flows
from service.deps import DeciderDep, StoreDep
from service.routers import problems
from service.schemas import Timestamp, UserView

router = APIRouter(prefix="/v1", tags=["users"])


@router.get(
    # ``:path`` so ids containing "/" are reachable too (sent percent-encoded)
    "/users/{user_id:path}",
    response_model=UserView,
    responses=problems(422, 503),
    summary="What the service knows about a user",
)
def get_user(
    user_id: Annotated[str, Path(min_length=1, max_length=256, pattern=r"^[^\x00]*$")],
    store: StoreDep,
    deciders: DeciderDep,
    ts: Annotated[
        Timestamp | None,
        Query(description="'now' for readiness (default: the user's latest outcome time)"),
    ] = None,
    limit: Annotated[
        int,
        Query(ge=1, le=flows.USER_HISTORY_MAX, description="Most history events on this page."),
    ] = flows.USER_HISTORY_LIMIT,
    cursor: Annotated[
        str | None,
        Query(
            min_length=3,
            max_length=64,
            pattern=flows.CURSOR_PATTERN,
            description="``next_cursor`` of the previous page (default: the first page).",
        ),
    ] = None,
) -> Response:
    """History oldest first, one page at a time (``decision_id`` null for organic outcomes;
    ``next_cursor`` null on the last page), accepted steps, stage, whether the user converted,
    and readiness for each step they are eligible for."""
    view = flows.user_view(store, deciders, user_id, now=ts, limit=limit, cursor=cursor)
    return Response(orjson.dumps(view), media_type="application/json")
