"""FastAPI dependencies: one name per thing a handler needs, each overridable in tests.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in the thread pool,
and a thread hop per dependency cost more than the handlers' own work. Everything lives on
``app.state`` (built by the lifespan in ``service.app``), never in module
globals, so two apps in one process (tests) never share a store, a registry or a model.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request, Security
from fastapi.security import APIKeyHeader

from features.catalog import Catalog
from service.metrics import Metrics
from service.plan_batcher import LoopPlanBatcher
from service.problems import Forbidden, Unauthorized
from service.runtime import Deciders, Runtime
from service.settings import Settings
from service.store import Store


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> Store:
    return request.app.state.store


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def get_deciders(request: Request) -> Deciders:
    """The snapshot serving this request: read once, kept to the end even across a reload."""
    return request.app.state.runtime.current


async def get_catalog(request: Request) -> Catalog:
    return request.app.state.catalog


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


@dataclass(frozen=True)
class Services:
    """What the decision and outcome handlers use, as one dependency.

    FastAPI spends about 50 us resolving each dependency of a request (its parameters, its
    cache key), which on ``next-step`` added up to more than the decision itself; the hot
    handlers take this one object instead of three. ``deciders`` is the snapshot serving this
    request, read once, as with ``DeciderDep``.
    """

    store: Store
    deciders: Deciders
    metrics: Metrics
    catalog: Catalog
    planning: LoopPlanBatcher
    allowed_context: frozenset[str] | None = None  # NEXTSTEP_CONTEXT_KEYS


async def get_services(request: Request) -> Services:
    state = request.app.state
    return Services(
        state.store,
        state.runtime.current,
        state.metrics,
        state.catalog,
        state.planning,
        state.settings.allowed_context,
    )


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServicesDep = Annotated[Services, Depends(get_services)]
StoreDep = Annotated[Store, Depends(get_store)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
DeciderDep = Annotated[Deciders, Depends(get_deciders)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Retries with the same key and body get the first response, byte for byte.",
    ),
]

_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="One of NEXTSTEP_API_KEYS."
)
_admin_key_header = APIKeyHeader(
    name="X-API-Key",
    scheme_name="AdminKey",
    auto_error=False,
    description="One of NEXTSTEP_ADMIN_KEYS (/admin routes only).",
)


async def require_api_key(
    request: Request, api_key: Annotated[str | None, Security(_api_key_header)]
) -> None:
    """401 unless ``X-API-Key`` equals one of the configured keys (constant-time compare).

    Every configured key is compared, so the time taken does not depend on which one matched.
    The key itself is never logged or echoed.
    """
    check_api_key(request.app.state.settings.keys, api_key)


async def require_admin_key(
    request: Request, api_key: Annotated[str | None, Security(_admin_key_header)]
) -> None:
    """/admin/*: 401 without a known key, 403 for a client key (``NEXTSTEP_API_KEYS``), which
    never grants admin rights; only ``NEXTSTEP_ADMIN_KEYS`` do (constant-time compares)."""
    settings = request.app.state.settings
    given = (api_key or "").encode("utf-8", "replace")
    admin = settings.admin_key_bytes
    if admin and api_key_ok(admin, given):
        return
    if settings.keys and api_key_ok(settings.keys, given):
        raise Forbidden("this key may not call /admin routes; use one of NEXTSTEP_ADMIN_KEYS")
    raise Unauthorized("a valid X-API-Key header (an admin key) is required")


def check_api_key(keys: tuple[bytes, ...], api_key: str | None) -> None:
    """Raise 401 unless auth is off or ``api_key`` (the header as Starlette decodes it; None
    or empty: no key) is one of ``keys``. The route dependency and the fast lane share it."""
    if keys and not api_key_ok(keys, (api_key or "").encode("utf-8", "replace")):
        raise Unauthorized("a valid X-API-Key header is required")


def api_key_ok(keys: tuple[bytes, ...], given: bytes) -> bool:
    """True when ``given`` is one of ``keys``; every key is compared (constant time)."""
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(given, k)
    return ok
