"""RFC 9457 problem details: one exception type per failure kind, mapped to JSON in one place.

Handlers and flows raise a ``ProblemError`` subclass and never build error responses themselves,
so every 4xx/5xx the service sends has the same shape (``type``, ``title``, ``status``,
``detail``, plus ``errors`` for validation) and media type ``application/problem+json``. Nothing
user-controlled reaches a response unsanitised (lone surrogates would break the JSON encoder) and
no traceback ever does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from service.store import StoreUnavailable

PROBLEM_MEDIA_TYPE = "application/problem+json"
_URN = "urn:nextstep:problem:"
log = logging.getLogger("nextstep.service")


class FieldError(BaseModel):
    """One validation failure: where (``loc``), what (``msg``) and its machine-readable ``type``."""

    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """The body of every error response (RFC 9457)."""

    type: str = Field(default="about:blank", examples=[f"{_URN}validation"])
    title: str
    status: int = Field(ge=400, le=599)
    detail: str | None = None
    errors: list[FieldError] | None = None


class ProblemError(Exception):
    """An error the service reports on purpose; subclasses fix the status and type."""

    status: int = 400
    slug: str = "bad-request"

    def __init__(
        self,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        errors: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})
        self.errors = list(errors) if errors is not None else None

    def to_dict(self) -> dict[str, Any]:
        return problem_dict(
            self.status, detail=self.detail, type_=_URN + self.slug, errors=self.errors
        )


class Unauthorized(ProblemError):
    status, slug = 401, "unauthorized"


class Forbidden(ProblemError):
    status, slug = 403, "forbidden"


class NotFound(ProblemError):
    status, slug = 404, "not-found"


class Conflict(ProblemError):
    status, slug = 409, "conflict"


class Unprocessable(ProblemError):
    status, slug = 422, "validation"


def clean_text(value: object, limit: int = 200) -> str:
    """A string safe to put in a JSON response: no lone surrogates, bounded length."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    return text.encode("utf-8", "replace").decode("utf-8")


def problem_dict(
    status: int,
    *,
    detail: str | None = None,
    type_: str = "about:blank",
    title: str | None = None,
    errors: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The problem object for ``status`` (used for responses and per-item batch errors)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body: dict[str, Any] = {
        "type": type_,
        "title": title or phrase,
        "status": status,
        "detail": clean_text(detail, 1000) if detail is not None else None,
    }
    if errors is not None:
        body["errors"] = [
            {
                "loc": [x if isinstance(x, int) else clean_text(x, 100) for x in e.get("loc", ())],
                "msg": clean_text(e.get("msg", ""), 300),
                "type": clean_text(e.get("type", ""), 100),
            }
            for e in errors[:50]
        ]
    return body


def problem_response(
    status: int,
    *,
    detail: str | None = None,
    type_: str = "about:blank",
    headers: Mapping[str, str] | None = None,
    errors: Sequence[Mapping[str, Any]] | None = None,
) -> Response:
    body = problem_dict(status, detail=detail, type_=type_, errors=errors)
    return Response(
        orjson.dumps(body), status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE
    )


def render_problem(exc: ProblemError) -> Response:
    return Response(
        orjson.dumps(exc.to_dict()),
        status_code=exc.status,
        headers=exc.headers or None,
        media_type=PROBLEM_MEDIA_TYPE,
    )


# -- exception handlers ------------------------------------------------------------------------
async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return render_problem(exc)


async def _on_store_unavailable(request: Request, exc: Exception) -> Response:
    """The store is down, full or read-only: 503 and a hint to retry, never a 500."""
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.store_errors.inc()
    return problem_response(
        503,
        detail="the decision store is unavailable; retry shortly",
        type_=_URN + "store-unavailable",
        headers={"Retry-After": "1"},
    )


async def _on_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return problem_response(
            400,
            detail="the request body is not valid JSON",
            type_=_URN + "malformed-json",
            errors=errors,
        )
    return problem_response(
        422,
        detail="the request does not match the schema",
        type_=_URN + "validation",
        errors=errors,
    )


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else None
    if exc.status_code == 404 and detail in (None, "Not Found"):
        detail = "no such resource"
    elif exc.status_code == 405:
        detail = "method not allowed for this resource"
    elif exc.status_code == 400:
        detail = "the request body could not be parsed"
    return problem_response(exc.status_code, detail=detail, headers=exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    """Last resort: log the bug with its traceback, answer 500 without one."""
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return problem_response(500, detail="internal error", type_=_URN + "internal")


def install_problem_handlers(app: FastAPI) -> None:
    """Map every error the app can raise to problem+json, once."""
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(StoreUnavailable, _on_store_unavailable)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(Exception, _on_unexpected)
