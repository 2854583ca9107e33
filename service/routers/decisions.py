"""``POST /v1/next-step`` and ``POST /v1/next-step:batch``."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from service import flows, user_state
from service.deps import IdempotencyKey, ServicesDep
from service.flows import Reply
from service.metrics import Metrics
from service.plan_batcher import LoopPlanBatcher
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
    # Valid requests are normally answered by ``service.fast_lane`` with the same ``serve_*``
    # functions; this route is the contract (OpenAPI, validation) and answers everything else.
    store, deciders, metrics = services.store, services.deciders, services.metrics
    planning = services.planning
    flows.check_context(services.allowed_context, req.context, ("body", "context"))
    if idempotency_key is not None:
        return respond(
            await serve_keyed_next_step(store, deciders, metrics, planning, req, idempotency_key)
        )
    return respond(await serve_next_step(store, deciders, metrics, planning, req))


async def serve_next_step(
    store: Store,
    deciders: Deciders,
    metrics: Metrics,
    planning: LoopPlanBatcher,
    req: NextStepRequest,
) -> Reply:
    """A key-less next-step: read, decide, commit (shared commits on a server), then answer.

    The route and ``service.fast_lane`` both call this, so they answer alike."""
    prepared = await _prepare(store, deciders, planning, req, None)
    await store.commit_decisions([prepared.row], prepared.shadow_rows)
    return flows.decided(prepared, metrics)


async def _prepare(
    store: Store,
    deciders: Deciders,
    planning: LoopPlanBatcher,
    req: NextStepRequest,
    digest: str | None,
) -> flows.PreparedDecision:
    """The user's stored state (one row, read as ``run_flow`` reads), then the decision on the
    event loop, where a planner miss is planned together with concurrent requests' misses."""
    catalog = deciders.primary.decider.catalog
    state = await run_flow(store, user_state.read_state, store, catalog, req.user_id)
    return await flows.prepare_next_step(deciders, req, state, planning, digest)


async def serve_keyed_next_step(
    store: Store,
    deciders: Deciders,
    metrics: Metrics,
    planning: LoopPlanBatcher,
    req: NextStepRequest,
    key: str,
) -> Reply:
    """A next-step with an Idempotency-Key: the key's first response byte for byte (409 if
    the key came with another request), or a new decision committed together with the key.

    The decision row and the key's record are one transaction, shared with concurrent
    requests like any decision; a concurrent retry that stored the key first makes this
    commit fail alone, and this request then answers with that retry's response.
    """
    digest = flows.request_digest(req)
    record = await run_flow(store, store.read_idempotent, key, flows.ROUTE_NEXT_STEP)
    if record is not None:
        return flows.replay(record, digest, metrics)
    prepared = await _prepare(store, deciders, planning, req, digest)
    try:
        await store.commit_decisions(
            [prepared.row], prepared.shadow_rows, [flows.key_record(key, digest, prepared)]
        )
    except store.integrity_errors:
        record = await run_flow(store, store.read_idempotent, key, flows.ROUTE_NEXT_STEP)
        if record is None:
            raise
        return flows.replay(record, digest, metrics)
    return flows.decided(prepared, metrics)


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
