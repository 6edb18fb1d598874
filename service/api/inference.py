"""POST /encode, /sample, /decode, /elbo and /heatmap: request -> arrays -> engine -> response. Nothing else.

Inference runs in the thread pool, never on the event loop.
"""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.body import read_body, request_body_doc
from service.api.deps import ArrayJSONResponse, ExecutorDep, floats
from service.errors import NotAcceptable
from service.images import grid, heatmap_overlay, png_bytes, to_pixels
from service.inputs import parse_latents
from service.schemas import (
    DecodeRequest,
    DecodeResponse,
    ElboRequest,
    ElboResponse,
    EncodeRequest,
    EncodeResponse,
    HeatmapRequest,
    SampleRequest,
    SampleResponse,
)

router = APIRouter(tags=["inference"])
PNG = {"content": {"image/png": {}}, "description": "with `Accept: image/png`: one image, or a grid for a batch"}


def state_of(request: Request) -> dict:
    """The request's state dict, where the batcher notes the batch size for the access log."""
    return request.scope.setdefault("state", {})


def wants_png(request: Request) -> bool:
    return "image/png" in request.headers.get("accept", "")


def png_response(engine, images, rows: int, cols: int) -> Response:
    """Raw-unit images (rows*cols, *input_shape) as one PNG grid with `rows` rows."""
    spec = engine.manifest.image
    if spec is None:
        raise NotAcceptable(
            f"this model's outputs are rows shaped {engine.manifest.input_shape}, not images; accept application/json"
        )
    pixels = to_pixels(images.reshape(rows * cols, spec.channels, spec.height, spec.width), spec.max_value)
    return Response(png_bytes(grid(pixels, rows, cols)), media_type="image/png")


@router.post("/encode", response_model=EncodeResponse, openapi_extra=request_body_doc(EncodeRequest, images=True))
async def encode(request: Request, executor: ExecutorDep) -> ArrayJSONResponse:
    """The posterior q(z|x) = N(mu, diag sigma^2) of each instance (JSON) or uploaded image (multipart)."""
    engine = executor.engine
    _, x_raw = await read_body(request, EncodeRequest, engine)
    encoded = await executor.encode(engine.to_model(x_raw), state_of(request))
    return ArrayJSONResponse({"mu": floats(encoded.mu), "sigma": floats(encoded.sigma), "logvar": floats(encoded.logvar)})


@router.post(
    "/sample",
    response_model=SampleResponse,
    response_model_exclude_none=True,
    responses={200: PNG},
    openapi_extra=request_body_doc(SampleRequest, images=True),
)
async def sample(request: Request, executor: ExecutorDep) -> Response:
    """Reparameterized draws z = mu + sigma * eps per instance, or draws from the prior without instances."""
    engine = executor.engine
    body, x_raw = await read_body(request, SampleRequest, engine)
    png = wants_png(request)
    sampled = await executor.call(engine.sample, x_raw, body.n_samples, body.seed, body.decode or png)
    if png:
        return png_response(engine, sampled.x, rows=sampled.z.shape[0], cols=sampled.z.shape[1])
    content = {"z": floats(sampled.z), "seed": sampled.seed}
    if sampled.x is not None:
        content["x"] = floats(sampled.x)
    return ArrayJSONResponse(content)


@router.post("/decode", response_model=DecodeResponse, responses={200: PNG})
async def decode(body: DecodeRequest, request: Request, executor: ExecutorDep) -> Response:
    """The mean of p(x|z) in raw units for each latent vector."""
    engine = executor.engine
    z = parse_latents(body.z, engine.manifest.latent_dim, engine.limits.max_instances)
    x = await executor.decode(z, state_of(request))
    if wants_png(request):
        return png_response(engine, x, rows=1, cols=len(x))
    return ArrayJSONResponse({"x": floats(x)})


@router.post(
    "/elbo",
    response_model=ElboResponse,
    response_model_exclude_none=True,
    openapi_extra=request_body_doc(ElboRequest, images=True),
)
async def elbo(request: Request, executor: ExecutorDep) -> ArrayJSONResponse:
    """Per-input ELBO and importance-weighted log-likelihood in nats, with calibrated anomaly decisions."""
    engine = executor.engine
    body, x_raw = await read_body(request, ElboRequest, engine)
    prepared = engine.prepare_elbo(
        x_raw,
        n_samples=body.n_samples,
        seed=body.seed,
        iw_samples=body.iw_samples,
        feature_scores=body.feature_scores,
        threshold=body.threshold,
        fpr=body.fpr,
    )
    scored = await executor.elbo(prepared, state_of(request))
    decisions = scored.decisions
    content = {
        "elbo": floats(scored.elbo),
        "reconstruction": floats(scored.reconstruction),
        "kl": floats(scored.kl),
        "log_likelihood": floats(scored.log_likelihood),
        "anomaly_score": floats(decisions.anomaly_score),
        "threshold": decisions.threshold,
        "is_anomaly": decisions.is_anomaly,
        "p_value": floats(decisions.p_value),
        "n_samples": scored.n_samples,
        "iw_samples": scored.iw_samples,
        "seed": scored.seed,
    }
    if scored.feature_scores is not None:
        content["feature_scores"] = floats(scored.feature_scores)
    return ArrayJSONResponse(content)


@router.post(
    "/heatmap",
    responses={200: {"content": {"image/png": {}}, "description": "the overlays side by side, one per input"}},
    response_class=Response,
    openapi_extra=request_body_doc(HeatmapRequest, images=True),
)
async def heatmap(request: Request, executor: ExecutorDep) -> Response:
    """A PNG of each input with its per-pixel anomaly scores (shares of -reconstruction) overlaid."""
    engine = executor.engine
    spec = engine.manifest.image
    if spec is None:
        raise NotAcceptable(f"this model takes rows shaped {engine.manifest.input_shape}, not images; use /elbo")
    body, x_raw = await read_body(request, HeatmapRequest, engine)
    scored = await executor.call(
        engine.elbo, x_raw, n_samples=body.n_samples, seed=body.seed, iw_samples=1, feature_scores=True
    )
    shape = (len(x_raw), spec.channels, spec.height, spec.width)
    pixels = to_pixels(x_raw.reshape(shape), spec.max_value)
    per_pixel = scored.feature_scores.reshape(shape).sum(axis=1)  # (B, H, W): channels add up
    overlays = [heatmap_overlay(p, s) for p, s in zip(pixels, per_pixel)]
    return Response(png_bytes(grid(np.stack(overlays), 1, len(overlays))), media_type="image/png")
