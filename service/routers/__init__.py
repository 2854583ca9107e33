"""One router per resource, mounted in ``service.app.create_app``."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from starlette.responses import Response

from service.flows import Reply
from service.problems import Problem


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer (rendered as problem+json)."""
    return {code: {"model": Problem, "description": HTTPStatus(code).phrase} for code in codes}


def respond(reply: Reply) -> Response:
    """The exact bytes a flow rendered (idempotent replays are marked in a header)."""
    headers = {"Idempotent-Replayed": "true"} if reply.replayed else None
    return Response(
        reply.body, status_code=reply.status, media_type="application/json", headers=headers
    )
