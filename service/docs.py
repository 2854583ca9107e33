"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) from assets shipped in the package.

FastAPI's default pages load their JavaScript and CSS from a public CDN (and ReDoc its fonts
from Google), so on an internal network they are blank. The assets live in
``service/static/docs`` instead (Swagger UI, Apache-2.0, and ReDoc, MIT: the licence files and
the bundles' own third-party notices sit next to them) and are served under ``/docs/assets``.
The pages load nothing from outside the service: no fonts, and no Swagger validator badge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse

from features.catalog import Catalog

ASSETS = Path(__file__).parent / "static" / "docs"
ASSETS_URL = "/docs/assets"


def install_docs(app: FastAPI, *, title: str) -> None:
    """Mount the assets and add ``/docs`` and ``/redoc`` (the app must have ``docs_url`` and
    ``redoc_url`` set to None, so FastAPI's CDN pages are not added too)."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")

    def url(request: Request, path: str) -> str:
        return f"{request.scope.get('root_path', '')}{path}"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=url(request, app.openapi_url or "/openapi.json"),
            title=f"{title} - Swagger UI",
            swagger_js_url=url(request, f"{ASSETS_URL}/swagger-ui-bundle.js"),
            swagger_css_url=url(request, f"{ASSETS_URL}/swagger-ui.css"),
            swagger_favicon_url=url(request, f"{ASSETS_URL}/favicon.png"),
            swagger_ui_parameters={"validatorUrl": None},  # the badge calls a public validator
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=url(request, app.openapi_url or "/openapi.json"),
            title=f"{title} - ReDoc",
            redoc_js_url=url(request, f"{ASSETS_URL}/redoc.standalone.js"),
            redoc_favicon_url=url(request, f"{ASSETS_URL}/favicon.png"),
            with_google_fonts=False,
        )


def with_catalog(schema: dict[str, Any], catalog: Catalog) -> dict[str, Any]:
    """The OpenAPI document of a service serving ``catalog``: request fields that name a step
    (``candidates`` of a next-step request, ``step`` of an organic outcome) list the served
    step ids as an enum, and the examples use them, so a client generated from the schema (or
    schemathesis) sends only ids this service knows. Changes ``schema`` in place."""
    ids = list(catalog.ids)
    step = {"type": "string", "enum": ids, "description": "A step id of the served catalog."}
    parts = schema.get("components", {}).get("schemas", {})
    request = parts.get("NextStepRequest", {})
    for option in request.get("properties", {}).get("candidates", {}).get("anyOf", []):
        if option.get("type") == "array":
            option["items"] = dict(step)
    for example in request.get("examples", []):
        if isinstance(example, dict) and "candidates" in example:
            example["candidates"] = ids[:2]
    organic = parts.get("OrganicOutcomeRequest", {}).get("properties", {})
    if "step" in organic:
        organic["step"] = {**step, "title": "Step"}
    return schema
