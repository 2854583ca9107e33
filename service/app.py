"""The FastAPI application factory and its lifespan.

Nothing is built at import time: ``create_app`` wires routers, middleware and error handlers,
and the lifespan builds the store (running migrations), loads the catalog and the models, and
starts the optional background jobs (model polling, idempotency pruning). Tests build as many
independent apps as they like; ``app_from_env`` is the factory uvicorn imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from features.catalog import load_catalog
from features.errors import CatalogError
from service.degraded import log_start
from service.deps import require_admin_key, require_api_key
from service.docs import install_docs, with_catalog
from service.fast_lane import NextStepLane
from service.heap import refreeze_heap, settle_heap
from service.metrics import Metrics
from service.middleware import BodyGuard, RequestMetrics
from service.model_loader import ModelLoader
from service.plan_batcher import LoopPlanBatcher
from service.problems import PROBLEM_MEDIA_TYPE, install_problem_handlers
from service.redact import public_error
from service.routers import admin, catalog, decisions, ops, outcomes, problems, users
from service.runtime import DeciderFactory, ModelDeciderFactory, Runtime
from service.settings import Settings
from service.store import Store
from service.user_state import sync_states

log = logging.getLogger("nextstep.service")
_PRUNE_EVERY_S = 3600.0
# Asking the registry about cached start-up models waits this long first, so the server binds
# and answers /readyz before MLflow's imports compete with it for the GIL; then it retries an
# unreachable registry with doubling pauses up to the cap.
_CONFIRM_AFTER_S = 0.5
_CONFIRM_RETRY_MAX_S = 60.0


def create_app(
    settings: Settings | None = None,
    *,
    decider_factory: DeciderFactory | None = None,
    settle_gc: bool = False,
) -> FastAPI:
    """Build the app. ``decider_factory(catalog, arm) -> Decider`` replaces model loading
    (tests use it to serve fake models); by default each arm's model comes from MLflow.
    ``settle_gc`` freezes the start-up heap (``service.heap``): the uvicorn factory sets it; a
    test process that builds many apps does not want their objects frozen."""
    settings = settings or Settings()
    metrics = Metrics(
        watch_window=settings.watch_window,
        drift_window=settings.drift_window,
        calibration_alert=settings.calibration_alert,
    )

    def _on_swap(deciders: Any) -> None:
        metrics.set_models(deciders)
        refreeze_heap()  # a no-op until start-up has frozen the heap

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logging.getLogger("nextstep").setLevel(settings.log_level_number)
        if settings.catalog is None:
            raise CatalogError("no catalog configured (set NEXTSTEP_CATALOG or --catalog)")
        cat = load_catalog(settings.catalog)
        store = Store(
            settings.db_url,
            sqlite_synchronous=settings.sqlite_synchronous,
            sqlite_mmap_mib=settings.sqlite_mmap_mib,
        )
        try:
            store.migrate()
            store.remember_catalog(cat.canonical_json(), cat.sha256(), str(settings.catalog))
            # states for this catalog (a no-op unless the catalog changed): before serving
            await asyncio.to_thread(sync_states, store, cat)
            pruned = store.prune_idempotency(settings.idempotency_ttl_hours * 3600)
            if pruned:
                log.info("pruned %d expired idempotency keys", pruned)
            factory = decider_factory or ModelDeciderFactory(
                settings, ModelLoader(settings.home, settings.tracking_uri, cat)
            )
            runtime = Runtime(settings, cat, factory, on_swap=_on_swap)
            await asyncio.to_thread(runtime.start)
            log_start(runtime.current, settings)
            app.state.settings = settings
            app.state.store = store
            app.state.catalog = cat
            app.openapi_schema = None  # rebuilt with the served catalog's step ids (service.docs)
            app.state.runtime = runtime
            app.state.metrics = metrics
            app.state.steps_body = orjson.dumps({"steps": cat.to_list()}, default=str)
            if settle_gc:
                settle_heap()  # after the imports and the models: see service.heap
            tasks = [asyncio.create_task(_prune_forever(store, settings))]
            if runtime.unconfirmed():  # served from the cache: ask the registry in the background
                tasks.append(asyncio.create_task(_confirm_cached(runtime)))
            if settings.reload_interval > 0:
                tasks.append(asyncio.create_task(_poll_forever(runtime, settings.reload_interval)))
            try:
                yield
            finally:
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
        finally:
            app.state.planning.close()
            store.dispose()

    otel = None if settings.otel else {"tracing": False, "metrics": False, "logs": False}
    app = NextstepAPI(
        telemetry=otel,
        title="nextstep",
        version="0.1.0",
        summary="Adaptive next-step recommender: the smallest useful next action for a user.",
        lifespan=lifespan,
        docs_url=None,  # service.docs serves /docs and /redoc from packaged assets, not a CDN
        redoc_url=None,
        redirect_slashes=False,  # "/v1/users" is not "/v1/users/": 404, not a redirect
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.planning = LoopPlanBatcher(settings.plan_batch_max, metrics.plan_passes.observe)
    install_problem_handlers(app)
    install_docs(app, title="nextstep")

    guarded: list[Any] = []
    guarded_responses: dict[int | str, dict[str, Any]] = {}
    if settings.auth_enabled:
        guarded = [Depends(require_api_key)]
        guarded_responses = problems(401)
    routers = (decisions.router, outcomes.router, users.router, catalog.router, admin.router)
    for r in routers[:-1]:
        app.include_router(r, dependencies=guarded, responses=guarded_responses)
    if settings.admin_guarded:  # admin keys only: a client key gets 403 (service.deps)
        app.include_router(
            admin.router, dependencies=[Depends(require_admin_key)], responses=problems(401, 403)
        )
    else:
        app.include_router(admin.router)
    app.include_router(ops.router)

    json_paths = {
        route.path
        for r in (*routers, ops.router)
        for route in r.routes
        if isinstance(route, APIRoute) and route.body_field is not None
    }
    app.add_middleware(BodyGuard, max_bytes=settings.max_body_bytes, json_paths=json_paths)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


class NextstepAPI(FastAPI):
    """FastAPI with the next-step fast lane (``service.fast_lane``) in front of its whole
    middleware stack, FastAPI's own error, telemetry and body-limit layers included: the lane
    renders its errors with the app's exception handlers itself, and everything it does not
    answer enters the stack exactly as before."""

    def build_middleware_stack(self) -> Any:
        return NextStepLane(super().build_middleware_stack(), fastapi_app=self)


def app_from_env() -> FastAPI:
    """The uvicorn factory (``service.app:app_from_env``): settings from ``NEXTSTEP_*``."""
    return create_app(Settings(), settle_gc=True)


# -- background jobs ---------------------------------------------------------------------------
async def _prune_forever(store: Store, settings: Settings) -> None:
    ttl = settings.idempotency_ttl_hours * 3600
    while True:
        await asyncio.sleep(min(_PRUNE_EVERY_S, ttl / 4))
        try:
            await asyncio.to_thread(store.prune_idempotency, ttl)
        except Exception as exc:  # the store may be down; the next round tries again
            log.warning("idempotency pruning failed: %s", type(exc).__name__)


async def _confirm_cached(runtime: Runtime) -> None:
    """Confirm the cached models start-up served, or swap in the champion promoted while the
    service was down; keeps asking an unreachable registry (the cached models serve meanwhile)."""
    pause = _CONFIRM_AFTER_S
    while True:
        await asyncio.sleep(pause)
        try:
            outcome = await asyncio.to_thread(runtime.confirm)
        except Exception as exc:  # the new champion was refused: the cached one keeps serving
            runtime.last_error = public_error(exc)
            log.warning("confirming the cached models: new champion refused: %s", exc)
            return
        if outcome != "unreachable":
            return
        pause = min(max(pause * 2, 1.0), _CONFIRM_RETRY_MAX_S)


async def _poll_forever(runtime: Runtime, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(runtime.reload, only_if_changed=True)
        except Exception as exc:  # refused model, unreachable registry: keep serving
            runtime.last_error = public_error(exc)
            log.warning("model polling: reload refused: %s", exc)


# -- OpenAPI -----------------------------------------------------------------------------------
def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, with every error response documented as application/problem+json."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=(
            "Errors are RFC 9457 problem details (application/problem+json). "
            "The contract is in docs/design.md, section 6, of the nextstep repository."
        ),
        routes=app.routes,
    )
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    for path_item in schema.get("paths", {}).values():
        for op in path_item.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            for code, response in op["responses"].items():
                if code.isdigit() and int(code) >= 400:
                    response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": problem_ref}}
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    catalog = getattr(app.state, "catalog", None)
    if catalog is not None:  # started: describe the served catalog's step ids
        with_catalog(schema, catalog)
    app.openapi_schema = schema
    return schema
