"""``POST /v1/next-step`` and ``POST /v1/next-step:batch``."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from service import flows
from service.deps import IdempotencyKey, ServicesDep
from service.routers import problems, respond
from service.schemas import BatchRequest, BatchResponse, Decision, NextStepRequest

router = APIRouter(prefix="/v1", tags=["decisions"])


@router.post(
    "/next-step",
    response_model=Decision,
    responses=problems(400, 409, 413, 415, 422, 503),
    summary="The next step for one user",
)
async def next_step(
    req: NextStepRequest,
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Decide what to offer this user now (``step`` null: offer nothing, ``reason`` says why).

    The decision is stored before the response is sent; report what the user did with
    ``POST /v1/outcomes`` and its ``decision_id``.
    """
    # Valid requests are normally answered by ``service.fast_lane`` with the same
    # ``flows.serve_*`` functions; this route is the contract (OpenAPI, validation) and answers
    # everything else.
    store, deciders, metrics = services.store, services.deciders, services.metrics
    planning = services.planning
    flows.check_context(services.allowed_context, req.context, ("body", "context"))
    if idempotency_key is not None:
        return respond(
            await flows.serve_keyed_next_step(
                store, deciders, metrics, planning, req, idempotency_key
            )
        )
    return respond(await flows.serve_next_step(store, deciders, metrics, planning, req))


@router.post(
    "/next-step:batch",
    response_model=BatchResponse,
    responses=problems(400, 409, 413, 415, 422, 503),
    summary="Next steps for up to 1,000 users",
)
async def next_step_batch(
    batch: BatchRequest,
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """One answer per request, in order: a decision, or a problem object for that item.

    With an ``Idempotency-Key`` a retried batch gets the first response and decides nothing
    again; the same key with another batch is 409.
    """
    for i, r in enumerate(batch.requests):
        flows.check_context(services.allowed_context, r.context, ("body", "requests", i, "context"))
    # up to 1,000 decisions: always in the thread pool, so the event loop keeps serving
    return respond(
        await run_in_threadpool(
            flows.next_step_batch,
            services.store,
            services.deciders,
            batch.requests,
            metrics=services.metrics,
            idempotency_key=idempotency_key,
        )
    )
