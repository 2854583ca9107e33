"""``POST /v1/outcomes``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body
from starlette.responses import Response

from service import flows
from service.deps import IdempotencyKey, ServicesDep
from service.flows import run_flow
from service.routers import problems, respond
from service.schemas import OutcomeOut, OutcomeRequest

router = APIRouter(prefix="/v1", tags=["outcomes"])


@router.post(
    "/outcomes",
    status_code=201,
    response_model=OutcomeOut,
    responses=problems(400, 404, 409, 413, 415, 422, 503),
    summary="Record what a user did with an offer",
)
async def record_outcome(
    req: Annotated[OutcomeRequest, Body()],
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """By ``decision_id`` (an offer this service made) or by ``user_id`` + ``step`` (organic).

    201 once recorded (durably); repeating the identical outcome returns the original record.
    A different second outcome for the same decision is 409, an unknown decision 404, and any
    outcome for a user who already converted 409.
    """
    flows.check_context(
        services.allowed_context, getattr(req, "context", None), ("body", "context")
    )
    return respond(
        await run_flow(
            services.store,
            flows.record_outcome,
            services.store,
            services.catalog,
            req,
            idempotency_key=idempotency_key,
            metrics=services.metrics,
        )
    )
