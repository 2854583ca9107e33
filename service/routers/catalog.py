"""``GET /v1/steps`` and ``GET /v1/experiments``: what the service offers and how it splits."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from service.deps import DeciderDep, SettingsDep
from service.schemas import ExperimentOut, StepsOut

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/steps", response_model=StepsOut, summary="The step catalog")
async def steps(request: Request) -> Response:
    """Every step with its stage, effort, value, requirements and any extra catalog fields."""
    return Response(request.app.state.steps_body, media_type="application/json")


@router.get("/experiments", response_model=ExperimentOut, summary="Arms of the online experiment")
async def experiments(deciders: DeciderDep, settings: SettingsDep) -> Response:
    """Each arm's policy (as configured and as served), exploration, model and weight."""
    exp = deciders.experiment
    total = sum(a.weight for a in exp.arms if a.shadow_of is None)
    arms = []
    for arm in exp.arms:
        decider = deciders.arms[arm.name].decider
        arms.append(
            {
                "name": arm.name,
                "policy": decider.policy_name,
                "configured_policy": arm.policy.name,
                "exploration": arm.exploration,
                "model": arm.model or settings.model_uri,
                "model_version": decider.model_version,
                "weight": 0.0 if arm.shadow_of else arm.weight / total,
                "shadow_of": arm.shadow_of,
            }
        )
    return Response(orjson.dumps({"name": exp.name, "arms": arms}), media_type="application/json")
