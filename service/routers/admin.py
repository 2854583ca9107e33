"""``POST /admin/reload``: pick up a new champion or experiments file without a restart."""

from __future__ import annotations

from fastapi import APIRouter

from features.errors import NextstepError
from service.deps import RuntimeDep
from service.problems import Conflict
from service.redact import public_error
from service.routers import problems
from service.schemas import ReloadOut

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post("/reload", response_model=ReloadOut, responses=problems(409), summary="Reload models")
def reload(runtime: RuntimeDep) -> dict:
    """Re-read the experiments file and re-resolve every arm's model, then swap atomically.

    Requests in flight finish on the previous models. A model or file that cannot be used is
    refused (409 with the reason) and the previous configuration keeps serving.
    """
    try:
        changed, deciders = runtime.reload()
    except NextstepError as exc:
        runtime.last_error = public_error(exc)
        raise Conflict(f"reload refused, still serving the previous models: {exc}") from None
    return {
        "status": "reloaded" if changed else "unchanged",
        "arms": deciders.describe(),
    }
