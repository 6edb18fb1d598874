"""create_app(settings, ...): builds the FastAPI app around one model directory.

The artifact is verified when the app is built (a bad directory stops start-up at once); the runtime
is loaded and warmed up in the lifespan, and /readyz turns 200 only after that succeeded.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from contextlib import asynccontextmanager
from functools import partial

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.core.artifact import Artifact, Manifest, load_artifact
from service.core.errors import ServiceError
from service.core.runtime import Runtime
from service.http.api import docs, health, inference, oip, web
from service.http.api.access import ApiKeyMiddleware, is_public
from service.http.api.fast_path import FastPath
from service.http.live_model import ModelHost, freeze_long_lived
from service.http.malloc import pin_mmap_threshold
from service.http.observability import (
    ACCESS_LOG,
    Metrics,
    ObservabilityMiddleware,
    Observer,
    RouteLabels,
    configure_logging,
)
from service.http.settings import Settings

log = logging.getLogger("vae.service")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    """One readable line from pydantic's errors: where, what was expected, what arrived."""
    errors = exc.errors()
    first = errors[0]
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error", "invalid JSON")
        return 400, "malformed_request", f"the body is not valid JSON: {reason}"
    parts = []
    for err in errors[:3]:
        loc = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
        got = repr(err.get("input"))
        got = got if len(got) <= 40 else got[:37] + "..."
        parts.append(f"{loc}: {err['msg']} (got {got})" if err["type"] != "missing" else f"{loc}: {err['msg']}")
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return 422, "invalid_input", "; ".join(parts) + more


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        response = _error(exc.status_code, exc.code, exc.message)
        if exc.status_code == 401:
            response.headers["www-authenticate"] = "Bearer"
        if exc.status_code == 503:  # loading, or a request that timed out: worth asking again shortly
            response.headers["retry-after"] = "1"
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(*_validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "http_error", str(exc.detail))


def _request_examples(manifest: Manifest) -> dict[str, dict]:
    """Request bodies that this model accepts, shown in /docs."""
    middle = manifest.preprocessing.to_raw(np.full((1, manifest.n_features), 0.5))[0]
    instance = [round(float(v), 4) for v in middle]
    return {
        "/encode": {"instances": [instance]},
        "/sample": {"instances": [instance], "n_samples": 2, "seed": 0, "decode": False},
        "/decode": {"z": [[0.0] * manifest.latent_dim]},
        "/elbo": {"instances": [instance], "n_samples": 8, "seed": 0, "feature_scores": False},
        "/heatmap": {"instances": [instance], "n_samples": 8, "seed": 0},
    }


ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "what was expected and what arrived"},
        "code": {"type": "string", "description": "a stable code: invalid_input, limit_exceeded, timeout, ..."},
    },
    "required": ["error", "code"],
}
# The statuses each native route can answer besides 200, with the {"error", "code"} body
# (service/core/errors.py); 401 is added to every route behind the key.
NATIVE_ERRORS: dict[str, dict[str, str]] = {
    "bad_body": {"400": "the body is not valid JSON, .npy or multipart"},
    "too_large": {"413": "the body, the batch or the answer is over a limit (VAE_MAX_*)"},
    "media": {"415": "a Content-Type the route does not take"},
    "invalid": {"422": "a value is out of range or of the wrong shape; the message names it"},
    "busy": {"503": "the model is not loaded yet, or the request did not finish within VAE_REQUEST_TIMEOUT_S"},
    "no_images": {"406": "a PNG was asked of a model whose inputs are not images"},
}
_INFERENCE = ("bad_body", "too_large", "media", "invalid", "busy")
ROUTE_ERRORS: dict[str, tuple[str, ...]] = {
    "/encode": _INFERENCE,
    "/sample": (*_INFERENCE, "no_images"),
    "/decode": (*_INFERENCE, "no_images"),
    "/elbo": _INFERENCE,
    "/heatmap": (*_INFERENCE, "no_images"),
    "/v1/model": ("busy",),
    "/v1/model/reload": (),
}
ERROR_REF = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def _document_errors_and_security(schema: dict, api_key: bool) -> None:
    """The native routes' error answers with the Error schema (not FastAPI's HTTPValidationError, which
    they never send), and the bearer scheme on every route behind the key (so /docs has Authorize)."""
    schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    schema["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "VAE_API_KEY, when the service has one"}
    }
    # With a key every protected route needs it; without one, sending it is allowed and changes nothing.
    required = [{"bearer": []}] if api_key else [{"bearer": []}, {}]
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if path in ROUTE_ERRORS:
                responses.pop("422", None)  # FastAPI's HTTPValidationError
                for group in ROUTE_ERRORS[path]:
                    for status, description in NATIVE_ERRORS[group].items():
                        responses[status] = {"description": description, "content": ERROR_REF}
                for status in ("409", "415"):  # declared on the route with a description; the body is an Error
                    if status in responses:
                        responses[status]["content"] = ERROR_REF
            if not is_public(path):
                operation["security"] = required
                if path in ROUTE_ERRORS or path == "/metrics":
                    responses["401"] = {"description": "no or a wrong API key", "content": ERROR_REF}


def _install_openapi(app: FastAPI, manifest: Manifest, api_key: bool) -> None:
    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for path, example in _request_examples(manifest).items():
                body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]
                body["example"] = example
            _document_errors_and_security(schema, api_key)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def _operation_id(route: APIRoute) -> str:
    """The route function's name (`elbo`, `model_card`): short, and stable while the function keeps its name.
    tests/service/test_openapi.py checks that they are unique."""
    return route.name


def _drain_on_sigterm(app: FastAPI, delay_s: float) -> None:
    """Chain a handler in front of the server's own: /readyz turns 503 at once; after `delay_s` (time for
    load balancers to notice) the server stops accepting connections and finishes the requests in flight.

    Signal handlers can only be set from the main thread; elsewhere (tests in a thread) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    loop = asyncio.get_running_loop()

    def handle(signum, frame):
        app.state.draining = True
        log.info("SIGTERM: /readyz answers 503; draining in %.3g s", delay_s)
        if callable(previous):
            loop.call_soon_threadsafe(loop.call_later, delay_s, previous, signum, frame)

    signal.signal(signal.SIGTERM, handle)


def _reload_on_sighup(host: ModelHost) -> None:
    """SIGHUP reloads the model directory, as POST /v1/model/reload does (main thread only, like SIGTERM).

    With several workers, uvicorn's parent process takes SIGHUP and replaces the workers one at a time,
    each loading the directory afresh; the workers leave SIGHUP alone.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        return
    if host.settings.workers > 1:
        return
    loop = asyncio.get_running_loop()
    signal.signal(signal.SIGHUP, lambda signum, frame: loop.call_soon_threadsafe(host.reload_soon))


class ServiceApp(FastAPI):
    """FastAPI with the fast path (service/http/api/fast_path.py) in front of everything, FastAPI's own
    per-request work included, when settings.fast_path is on; it hands what it does not take to FastAPI."""

    fast_path: FastPath | None = None

    async def __call__(self, scope, receive, send) -> None:
        if self.fast_path is None or scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        scope["app"] = self
        await self.fast_path(scope, receive, send)


def create_app(settings: Settings, artifact: Artifact | None = None, runtime: Runtime | None = None) -> FastAPI:
    """The service for settings.model_dir. Tests may pass a loaded artifact and a runtime of their own."""
    # The graphs' files of the runtime that will load them are hashed; the rest need only exist (load_artifact).
    artifact = artifact or load_artifact(settings.model_dir, runtime=runtime.name if runtime else settings.runtime)
    configure_logging(settings.log_level)
    metrics = Metrics(model=artifact.manifest.name)

    host = ModelHost(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        pin_mmap_threshold()  # before the model loads: memory a large request frees then leaves the process
        try:
            live = await host.start(artifact, runtime)
        except Exception as exc:
            app.state.not_ready_reason = f"{type(exc).__name__}: {exc}"
            log.error("model %s failed to load: %s", artifact.dir, app.state.not_ready_reason)
            raise
        grpc_server = None
        if settings.grpc_port is not None:  # imported only then: without it, grpcio is never loaded
            from service.http.grpc.server import GrpcServer

            grpc_server = await GrpcServer.start(app, settings)
        _drain_on_sigterm(app, settings.drain_delay_s)
        _reload_on_sighup(host)
        log.info("serving %s (version %s) with the %s runtime", artifact.dir, live.version, live.engine.runtime.name)
        freeze_long_lived()
        yield
        if grpc_server is not None:
            await grpc_server.stop(settings.request_timeout_s)
        await host.close()
        metrics.close()
        ACCESS_LOG.drain()  # the last requests' lines, before the process may exit

    app = ServiceApp(
        title="VAE anomaly-scoring service",
        version="0.1.0",
        description=(
            f"Model `{artifact.manifest.name}`: {artifact.manifest.likelihood} likelihood, "
            f"input_shape {artifact.manifest.input_shape}, latent_dim {artifact.manifest.latent_dim}. "
            "All log-densities are in nats per input."
        ),
        lifespan=lifespan,
        docs_url=None,  # served from the app's own assets instead (service/http/api/docs.py)
        redoc_url=None,
        generate_unique_id_function=_operation_id,
    )
    app.state.host = host
    app.state.draining = False
    app.state.not_ready_reason = "loading"
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.observer = Observer(metrics, RouteLabels(app))
    # Which routes need the API key is decided in one place, by path: ApiKeyMiddleware (service/http/api/access.py)
    for router in (
        health.router,
        health.protected,
        inference.router,
        oip.health,
        oip.router,
        web.router,
        web.protected,
        docs.router,
    ):
        app.include_router(router)
    _install_error_handlers(app)
    _install_openapi(app, artifact.manifest, settings.api_key is not None)
    if settings.api_key is not None:
        # Inside CORS, whose preflights carry no key; before any route reads a body. The fast path, in front
        # of all of these, checks the key itself and leaves a request without it to this middleware.
        app.add_middleware(ApiKeyMiddleware, key=settings.api_key.get_secret_value().encode())
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-request-id"],
            expose_headers=["x-request-id"],
        )
    app.add_middleware(ObservabilityMiddleware, observer=app.state.observer, max_body_bytes=settings.max_body_bytes)
    if settings.fast_path:
        app.fast_path = FastPath(partial(FastAPI.__call__, app), host, app.state.observer, settings)
    return app
