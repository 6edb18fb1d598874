"""The hottest requests without Starlette or FastAPI: JSON POSTs to /elbo, /encode and /decode, and .npy POSTs
to /elbo and /encode.

The outermost ASGI layer of the app (service/http/app.py). A request it takes builds no Request or Response
object and passes through no middleware: the layer itself checks the API key, takes the request id, the
model version and the body, calls the route's own answer function (service/http/api/inference.py
JSON_ROUTES, which the FastAPI routes call too) and writes the answer's bytes. It records the request with
the same Observer as the observability middleware (metrics, access log), so nothing tells the two apart.

What it does not take goes on, untouched, to the app's middleware and routes: other paths and methods, a
missing or wrong API key, a body that is neither JSON nor .npy (or .npy to /decode, which takes no
instances), declared too large or without a Content-Length, a PNG wanted, a CORS request (an Origin header,
when CORS is on) and a model still loading. An error on the fast path is rendered by the app's own exception
handlers. So every answer, errors included, is the route's: tests/service/test_fast_path.py compares them
byte for byte.

Costs it avoids: FastAPI's own per-request work, the middleware stack (each layer wrapping `send`),
Starlette's Request, Headers and Response objects; about half the CPU per request of the same app without
it (docs/benchmark-serving.md). One thing FastAPI would do that it does not: FastAPI's built-in
OpenTelemetry instrumentation, when an OpenTelemetry provider is configured, does not see these requests
(set VAE_FAST_PATH=false to trace them).
"""

from __future__ import annotations

import logging

import orjson
from fastapi import Request
from starlette.datastructures import QueryParams

from service.http.api.access import bearer_matches
from service.http.api.answers import INLINE_BYTES, json_answer
from service.http.api.body import JSON, NPY, npy_options, parse_json, parse_npy
from service.http.api.deps import render_error
from service.http.api.inference import JSON_ROUTES, JsonRoute
from service.http.live_model import LiveModel, ModelHost
from service.http.observability import Observer, sending_ids, with_ids
from service.http.settings import Settings

log = logging.getLogger("vae.service")
JSON_TYPE, NPY_TYPE = JSON.encode(), NPY.encode()
INTERNAL_ERROR = b"Internal Server Error"  # what Starlette's ServerErrorMiddleware answers
# Larger bodies go the routes' way, copied into one buffer as they arrive (service/http/api/body.py read_raw)
# rather than joined at the end; their parsing costs far more than the layers the fast path skips.
MAX_FAST_BODY_BYTES = 1 << 20


class FastPath:
    def __init__(self, app, host: ModelHost, observer: Observer, settings: Settings) -> None:
        self.app = app  # the app's own middleware stack: everything the fast path does not take
        self.host = host
        self.observer = observer
        self.max_fast_body_bytes = min(settings.max_body_bytes, MAX_FAST_BODY_BYTES)
        self.key = settings.api_key.get_secret_value().encode() if settings.api_key is not None else None
        self.cors = bool(settings.cors_origins)

    async def __call__(self, scope, receive, send) -> None:
        route = JSON_ROUTES.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        live = self.host.current
        kind, given_id = self._takes(route, scope["headers"]) if route is not None and live is not None else _NOT_TAKEN
        if kind is None:
            return await self.app(scope, receive, send)
        request_id = self.observer.request_id(given_id)
        started = self.observer.start()
        live.acquire()
        state: dict = {"request_id": request_id, "live_model": live, "status": 500}
        try:
            await self._answer(route, kind, live, scope, receive, send, state)
        finally:
            live.release()
            self.observer.finish(
                started, request_id, "POST", scope["path"], state["status"], live.version, state.get("batch_size")
            )

    def _takes(self, route: JsonRoute, headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bytes | None]:
        """The body's media type (JSON, or .npy for routes that take instances) when this request is one the
        fast path answers exactly as the routes would (see the docstring), None otherwise; and its X-Request-ID."""
        content_type = length = accept = authorization = request_id = None
        origin = False
        # One pass over the headers, the key check's and the request id's too. Of repeated headers the first
        # counts, as Starlette's Headers.get reads them for the routes.
        for name, value in headers:
            if name == b"content-type":
                content_type = value if content_type is None else content_type
            elif name == b"content-length":
                length = value
            elif name == b"authorization":
                authorization = value if authorization is None else authorization
            elif name == b"accept":
                accept = value if accept is None else accept
            elif name == b"origin":
                origin = True
            elif name == b"x-request-id":
                request_id = value if request_id is None else request_id
        kind = content_type.partition(b";")[0].strip().lower() if content_type is not None else None
        takes = (
            (kind == JSON_TYPE or (kind == NPY_TYPE and route.takes_npy))
            and length is not None
            and length.isdigit()
            and int(length) <= self.max_fast_body_bytes
            and (accept is None or b"image/png" not in accept)
            and not (origin and self.cors)
            and (self.key is None or bearer_matches(authorization or b"", self.key))
        )
        return (kind if takes else None), request_id

    async def _answer(self, route: JsonRoute, kind: bytes, live: LiveModel, scope, receive, send, state: dict) -> None:
        """The answer, its status in state["status"]: written here with its ids for a JSON answer that fits in
        memory (most), or by the app's error handlers or the streamed answer through `sending_ids`."""
        executor = live.executor
        deadline = executor.deadline()
        try:
            raw = await receive_body(receive)
            if raw is None:  # the client went away before its body arrived: nobody to answer
                state["batch_size"] = None
                return
            if kind == NPY_TYPE:  # options in the query string, read as Starlette's Request reads it
                body = npy_options(QueryParams(scope["query_string"]).multi_items(), route.model)
                x = await parse_npy(raw, executor, deadline)
            else:
                body, x = await parse_json(raw, route.model, executor, deadline)
            content, size = await route.answer(executor, body, x, state, deadline)
        except Exception as exc:
            scope.setdefault("state", {}).update(state)
            await self._error(scope, receive, sending_ids(send, state), exc)
            return
        if size > INLINE_BYTES:  # streamed a chunk at a time from the worker pool, as the route does
            await json_answer(content, size)(scope, receive, sending_ids(send, state))
            return
        answer = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
        headers = [(b"content-length", str(len(answer)).encode()), (b"content-type", JSON_TYPE)]
        state["status"] = 200
        await send(
            {"type": "http.response.start", "status": 200, "headers": with_ids(headers, state["request_id"], live)}
        )
        await send({"type": "http.response.body", "body": answer})

    async def _error(self, scope, receive, send, exc: Exception) -> None:
        """The app's own answer to `exc`, or a 500 as Starlette would give for an exception nothing handles."""
        try:
            response = await render_error(Request(scope, receive), exc)
        except Exception:
            log.exception("unhandled error on %s", scope["path"])
            headers = [
                (b"content-length", str(len(INTERNAL_ERROR)).encode()),
                (b"content-type", b"text/plain; charset=utf-8"),
            ]
            await send({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": INTERNAL_ERROR})
            return
        await response(scope, receive, send)


_NOT_TAKEN: tuple[None, None] = (None, None)


async def receive_body(receive) -> bytes | None:
    """The whole body (its size already checked against the limit from Content-Length); None on disconnect."""
    message = await receive()
    if message["type"] != "http.request":
        return None
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)
