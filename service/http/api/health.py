"""Liveness, readiness and the model card."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.core.errors import UnsupportedMediaType
from service.http.api.deps import LiveDep

router = APIRouter(tags=["health"])  # public (service/http/api/access.py): probes must reach these
protected = APIRouter(tags=["model"])  # behind the API key when one is set


@router.get("/healthz")
async def healthz() -> dict:
    """The process is alive."""
    return {"status": "alive"}


@router.get("/readyz", responses={503: {"description": "the model is not loaded and warmed up yet"}})
async def readyz(request: Request) -> JSONResponse:
    """200 once the model is loaded and a warm-up inference succeeded, else 503."""
    if request.app.state.draining:
        return JSONResponse({"status": "not ready", "reason": "shutting down"}, status_code=503)
    if request.app.state.host.current is None:
        return JSONResponse({"status": "not ready", "reason": request.app.state.not_ready_reason}, status_code=503)
    return JSONResponse({"status": "ready"})


@protected.get("/metrics", tags=["observability"], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: requests, latencies, batching, in-flight requests, model info, the process."""
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@protected.head("/metrics", include_in_schema=False)
async def metrics_head(request: Request) -> Response:
    """What GET /metrics would answer, without the body (uvicorn sends none to a HEAD)."""
    return await metrics(request)


@protected.get("/v1/model")
async def model_card(live: LiveDep, request: Request) -> dict:
    """The manifest's public fields, the version and runtime serving them, and the request limits."""
    engine = live.engine
    return {
        **engine.manifest.public(),
        "version": live.version,
        "runtime": engine.runtime.name,
        "runtime_threads": request.app.state.settings.runtime_threads,
        "batching": request.app.state.settings.batching,
        "threshold": engine.default_threshold,
        "limits": {
            "max_instances": engine.limits.max_instances,
            "max_samples": engine.limits.max_samples,
            "max_iw_samples": engine.limits.max_iw_samples,
            "max_draws": engine.limits.max_draws,
            "max_response_bytes": engine.limits.max_response_bytes,
            "max_body_bytes": request.app.state.settings.max_body_bytes,
        },
    }


@protected.post(
    "/v1/model/reload",
    responses={
        409: {"description": "the new model failed a check; the old one goes on serving"},
        415: {"description": "the request has no `Content-Type: application/json`"},
    },
)
async def reload_model(request: Request) -> dict:
    """Load the model directory again (after a new training run replaced it), verify it, and swap it in.

    Needs `Content-Type: application/json` (the body is ignored). Verified first: every file's sha256, the
    export parity in its manifest, and a warm-up inference. Requests in flight finish on the old version;
    every response names its version in X-Model-Version.
    """
    # A web page on any other site can send a form or a bodiless POST here without asking (a "simple"
    # request, no CORS preflight); a JSON content type it can only send after a preflight that CORS
    # refuses. Without VAE_API_KEY this is what stops any page a user opens from reloading the model.
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType(
            f"POST /v1/model/reload needs `Content-Type: application/json` (got {media_type or 'none'}); "
            "the body is ignored"
        )
    return await request.app.state.host.reload()
