"""``POST /v1/next-step`` and ``POST /v1/next-step:batch``."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from service import flows
from service.deps import IdempotencyKey, ServicesDep
from service.flows import Reply
from service.metrics import Metrics
from service.routers import problems, respond, run_flow
from service.runtime import Deciders
from service.schemas import BatchRequest, BatchResponse, Decision, NextStepRequest
from service.store import Store

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
    store, deciders, metrics = services.store, services.deciders, services.metrics
    if idempotency_key is not None:  # key, effect and response in one transaction
        return respond(
            await run_flow(
                store,
                flows.next_step,
                store,
                deciders,
                req,
                idempotency_key=idempotency_key,
                metrics=metrics,
            )
        )
    return respond(await serve_next_step(store, deciders, metrics, req))


async def serve_next_step(
    store: Store, deciders: Deciders, metrics: Metrics, req: NextStepRequest
) -> Reply:
    """A key-less next-step: decide, commit (shared commits on a server), then answer.

    The route and ``service.fast_lane`` both call this, so they answer alike."""
    prepared = await run_flow(store, flows.decide_next_step, store, deciders, req)
    await store.commit_decisions([prepared.row], prepared.shadow_rows)
    return flows.decided(prepared, metrics)


@router.post(
    "/next-step:batch",
    response_model=BatchResponse,
    responses=problems(400, 413, 415, 422, 503),
    summary="Next steps for up to 1,000 users",
)
async def next_step_batch(batch: BatchRequest, services: ServicesDep) -> Response:
    """One answer per request, in order: a decision, or a problem object for that item."""
    # up to 1,000 decisions: always in the thread pool, so the event loop keeps serving
    return respond(
        await run_in_threadpool(
            flows.next_step_batch,
            services.store,
            services.deciders,
            batch.requests,
            metrics=services.metrics,
        )
    )
