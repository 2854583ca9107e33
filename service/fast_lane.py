"""A pure-ASGI lane for the hottest request: a valid ``POST /v1/next-step``.

A product backend calls ``next-step`` on every page view. Measured in process, FastAPI's
path to the handler (its error, telemetry and body-limit layers, routing, the exception and
exit-stack middlewares, dependency and body solving, our body guard and request metrics) cost
about 250 us per request, more than the decision itself, and kept one worker at under a third
of a bare FastAPI app's throughput. ``service.app.NextstepAPI`` puts the lane in front of that
whole stack.

The lane answers only the requests the route would accept, with the route's own code
(``flows.serve_next_step``) and the app's own exception handlers, so its responses are
the route's responses. Anything it is not sure about goes down the normal path untouched
(the body it read is replayed): a body the strict parser refuses, a malformed
``Idempotency-Key``, no ``Content-Length`` or one over the limit, a non-JSON content type.
Those requests get FastAPI's validation, problem documents and status codes as before; the
route stays the single definition of the contract (OpenAPI, errors). With API keys configured,
the key is checked first, from the headers alone: a request without the right key goes down
the normal path before the lane reads a byte of its body, so nothing unauthenticated is read
or parsed here (the route answers it 401, or 400 for malformed JSON as it always has).
Requests are counted and timed in the same Prometheus series as the middleware's.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.deps import api_key_ok
from service.flows import check_context, serve_keyed_next_step, serve_next_step
from service.middleware import is_json_media, replay_body
from service.problems import problem_response
from service.schemas import NextStepRequest

log = logging.getLogger("nextstep.service")
PATH = "/v1/next-step"
_JSON = (b"content-type", b"application/json")
_REPLAYED = (b"idempotent-replayed", b"true")
# what the route's ``Idempotency-Key`` header accepts (``service.deps.IdempotencyKey``)
_KEY = re.compile(r"[\x21-\x7e]{1,255}")


class NextStepLane:
    """Serve valid ``POST /v1/next-step`` requests directly (see the module docstring).

    ``app`` is the rest of the middleware stack; ``fastapi_app`` the app whose ``state``
    (store, runtime, metrics, settings; read per request, so a model reload is seen at once)
    and exception handlers (which render errors raised while serving) the lane uses.
    """

    def __init__(self, app: ASGIApp, *, fastapi_app: Any) -> None:
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        state = self.fastapi_app.state
        settings = state.settings
        length = -1
        json_body = False
        api_key: str | None = None
        key: str | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = int(value) if value.isdigit() else -1
            elif name == b"content-type":
                json_body = is_json_media(value.decode("latin-1"))
            elif name == b"idempotency-key" and key is None:
                key = value.decode("latin-1")
                if not _KEY.fullmatch(key):
                    length = -1  # the route's 422
                    break
            elif name == b"transfer-encoding":
                length = -1  # a streamed body: the guard's path
                break
            elif name == b"x-api-key" and api_key is None:
                api_key = value.decode("latin-1")  # as Starlette decodes it for the route
        if not json_body or length < 0 or length > settings.max_body_bytes:
            await self.app(scope, receive, send)
            return
        keys = settings.keys
        if keys and not api_key_ok(keys, (api_key or "").encode("utf-8", "replace")):
            # unread: the route answers it (the lane never reads an unauthenticated body)
            await self.app(scope, receive, send)
            return
        body, complete = await _read_body(receive, settings.max_body_bytes)
        if body is None:  # the client went away
            return
        req = _parse(body) if complete else None
        if req is None:
            await self.app(scope, replay_body(body, receive, more=not complete), send)
            return
        await self._serve(scope, receive, send, state, req, key)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        state: Any,
        req: NextStepRequest,
        key: str | None,
    ) -> None:
        start = time.perf_counter()
        metrics = state.metrics
        try:
            check_context(state.settings.allowed_context, req.context, ("body", "context"))
            store, deciders, planning = state.store, state.runtime.current, state.planning
            if key is None:
                reply = await serve_next_step(store, deciders, metrics, planning, req)
            else:
                reply = await serve_keyed_next_step(store, deciders, metrics, planning, req, key)
        except Exception as exc:  # rendered exactly as the route's exception handlers would
            response = await self._handle(scope, receive, exc)
            await response(scope, receive, send)
            status = response.status_code
        else:
            await send(
                {
                    "type": "http.response.start",
                    "status": reply.status,
                    "headers": [
                        _JSON,
                        (b"content-length", str(len(reply.body)).encode()),
                        *((_REPLAYED,) if reply.replayed else ()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": reply.body})
            status = reply.status
        metrics.observe_request("POST", PATH, status, time.perf_counter() - start)

    async def _handle(self, scope: Scope, receive: Receive, exc: Exception) -> Any:
        handlers = self.fastapi_app.exception_handlers
        for cls in type(exc).__mro__:
            handler = handlers.get(cls)
            if handler is not None:
                return await handler(Request(scope, receive), exc)
        log.exception("unexpected error on POST %s", PATH)  # pragma: no cover - Exception is mapped
        return problem_response(500, detail="internal error")


def _parse(body: bytes) -> NextStepRequest | None:
    """The request, if the route would accept this body exactly so; else None.

    ``orjson.loads`` then python-mode validation is what FastAPI does (with ``json.loads``);
    where the two parsers could disagree (NaN literals, huge integers) orjson refuses and the
    request takes the route's path.
    """
    try:
        data = orjson.loads(body)
        if not isinstance(data, dict):
            return None
        return NextStepRequest.model_validate(data)
    except Exception:
        return None


async def _read_body(receive: Receive, limit: int) -> tuple[bytes | None, bool]:
    """The whole body (``complete``) or what was read before it passed ``limit``."""
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None, False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            return b"".join(chunks), False
        if not message.get("more_body", False):
            return b"".join(chunks), True
