"""Pure ASGI middleware: request body limits and media type, and request metrics.

Pure ASGI (not ``BaseHTTPMiddleware``) because it sits on every request: no extra task, no
response buffering. The body guard reads the body once, up to the limit, before any routing or
parsing happens, so an oversized body is refused with 413 whether or not it announced its size
(``Content-Length`` is checked first, streamed bytes are counted too), and a JSON endpoint gets
415 for a body that is not JSON, before FastAPI would turn it into a confusing 422.
"""

from __future__ import annotations

import time
from collections.abc import Collection

import orjson
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics
from service.problems import PROBLEM_MEDIA_TYPE, problem_dict

_URN = "urn:nextstep:problem:"


async def _send_problem(send: Send, status: int, detail: str, slug: str) -> None:
    body = orjson.dumps(problem_dict(status, detail=detail, type_=_URN + slug))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def is_json_media(content_type: str) -> bool:
    """``application/json`` or any ``application/*+json``, parameters ignored."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class BodyGuard:
    """Refuse bodies over ``max_bytes`` (413) and non-JSON bodies on ``json_paths`` (415)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, json_paths: Collection[str]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.json_paths = frozenset(json_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _send_problem(
                    send, 400, "Content-Length is not a number", "malformed-request"
                )
                return
            if size > self.max_bytes:
                await _send_problem(send, 413, self._too_large(), "payload-too-large")
                return
        elif headers.get("transfer-encoding") is None and scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)  # no body: nothing to guard
            return
        chunks: list[bytes] = []
        total = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await _send_problem(send, 413, self._too_large(), "payload-too-large")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if body and scope["path"] in self.json_paths:
            content_type = headers.get("content-type")
            if content_type is None or not is_json_media(content_type):
                await _send_problem(
                    send, 415, "the request body must be application/json", "unsupported-media-type"
                )
                return
        await self.app(scope, replay_body(body, receive), send)

    def _too_large(self) -> str:
        return f"the request body exceeds {self.max_bytes} bytes"


def replay_body(body: bytes, receive: Receive, *, more: bool = False) -> Receive:
    """A ``receive`` that first returns the bytes already read (``more``: the stream goes
    on), then whatever the client sends next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replay


class RequestMetrics:
    """Count requests and time them, labelled by route template (bounded cardinality)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            template = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe_request(
                scope["method"], template, status, time.perf_counter() - start
            )
