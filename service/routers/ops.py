"""``/healthz``, ``/readyz`` and ``/metrics``: open even when API keys are set."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from starlette.responses import Response

from service.degraded import degraded_reason
from service.deps import MetricsDep, RuntimeDep, StoreDep
from service.problems import PROBLEM_MEDIA_TYPE, problem_dict
from service.redact import redact
from service.routers import problems
from service.schemas import Health, Readiness
from service.store import StoreUnavailable

router = APIRouter(tags=["ops"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz", response_model=Readiness, responses=problems(503), summary="Store and model usable"
)
def readyz(store: StoreDep, runtime: RuntimeDep) -> Response:
    """200 when the store answers. ``status`` is ``degraded`` (still 200: every request is
    answered) when an arm serves the ladder baseline because its model is missing; ``reason``
    says which arm and why, ``notes`` add detail (no registry, cached copy...)."""
    deciders = runtime.current
    primary = deciders.primary
    arms = deciders.describe()
    # open route: every note is redacted (a tracking URI may carry user:password@)
    notes = [redact(f"{a['name']}: {a['note']}") for a in arms if a["note"]]
    if runtime.last_error:
        notes.append(redact(f"last reload failed: {runtime.last_error}"))
    for a in arms:
        for field in ("note", "model_source"):
            if isinstance(a.get(field), str):
                a[field] = redact(a[field])
    body = {
        "model": primary.decider.model_version,
        "policy": primary.decider.policy_name,
        "arms": arms,
        "notes": notes,
    }
    try:
        store.ping()
    except StoreUnavailable as exc:
        problem = problem_dict(
            503, detail=f"store unusable: {exc}", type_="urn:nextstep:problem:not-ready"
        )
        return Response(
            orjson.dumps({**problem, "store": "unavailable", **body}),
            status_code=503,
            media_type=PROBLEM_MEDIA_TYPE,
            headers={"Retry-After": "1"},
        )
    reason = degraded_reason(deciders)
    status = "ready" if reason is None else "degraded"
    return Response(
        orjson.dumps({"status": status, "store": "ok", **body, "reason": reason}),
        media_type="application/json",
    )


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
async def metrics(m: MetricsDep) -> Response:
    return Response(m.render(), media_type=m.content_type)
