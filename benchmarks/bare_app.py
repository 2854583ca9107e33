"""The ceiling for one Python worker: a bare FastAPI app that parses the same request body as
``POST /v1/next-step`` (a pydantic model) and returns a fixed answer. No store, no model."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field
from starlette.responses import Response

FIXED = (
    b'{"decision_id":"0","user_id":"u","step":"read_intro","stage":"start","effort":1,'
    b'"p_accept":0.5,"propensity":1.0,"explored":false,"policy":"planner","arm":"champion",'
    b'"model_version":"1","candidates":[],"reason":null}'
)


class NextStepRequest(BaseModel):
    user_id: str = Field(min_length=1, max_length=256)
    context: dict[str, Any] = Field(default_factory=dict)
    ts: str | float | None = None
    candidates: list[str] | None = None


def create_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/next-step")
    async def next_step(req: NextStepRequest) -> Response:
        return Response(FIXED, media_type="application/json")

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app
