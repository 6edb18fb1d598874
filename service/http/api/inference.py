"""POST /encode, /sample, /decode, /elbo and /heatmap: request -> arrays -> engine -> response. Nothing else.

Each route bounds its answer's size from the request before any work (service/http/api/answers.py), and runs
its inference, and any large parsing and serialisation, in the worker pool within the request's deadline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from service.core.engine import ELBO_OUTPUTS, PER_INPUT_OUTPUTS, Deadline, ElboOptions, Scored, VaeEngine
from service.core.errors import NotAcceptable
from service.core.images import grid, grid_canvas, heatmap_overlay, place, png_bytes, png_size_bound, to_pixels
from service.http.api.answers import check_answer, json_answer
from service.http.api.body import NPY, accepted_types, read_body, request_body_doc
from service.http.api.deps import ExecutorDep, floats
from service.http.executor import Executor
from service.http.json_writer import json_bytes
from service.http.schemas import (
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


def image_spec(engine: VaeEngine):
    """The model's image spec, or 406 when its outputs are not images."""
    spec = engine.manifest.image
    if spec is None:
        raise NotAcceptable(
            f"this model's outputs are rows shaped {engine.manifest.input_shape}, not images; accept application/json"
        )
    return spec


def check_png(engine: VaeEngine, rows: int, cols: int, channels: int | None = None) -> None:
    """413 before any work when a PNG grid of rows x cols of the model's images may exceed the answer limit."""
    spec = image_spec(engine)
    size = png_size_bound(channels or spec.channels, rows * spec.height, cols * spec.width)
    check_answer(engine, size, lambda: f"a PNG of {rows} x {cols} images of {spec.width}x{spec.height}")


def decoded_png(engine: VaeEngine, z: np.ndarray, rows: int, cols: int, deadline: Deadline) -> bytes:
    """Latent vectors (rows*cols, d) decoded a chunk at a time straight into the pixels of one PNG grid: the
    decoder's output never exists whole, only its uint8 pixels (in the worker pool)."""
    spec = engine.manifest.image
    canvas = grid_canvas(rows, cols, spec.channels, spec.height, spec.width)
    for start, x in engine.decode_chunks(z, deadline):
        pixels = to_pixels(x.reshape(len(x), spec.channels, spec.height, spec.width), spec.max_value)
        place(canvas, start, pixels, cols)
    deadline.check()
    return png_bytes(canvas)


def png(content: bytes) -> Response:
    return Response(content, media_type="image/png")


async def encode_answer(
    executor: Executor, body: EncodeRequest, x_raw: np.ndarray, state: dict, deadline: Deadline
) -> tuple[dict, int]:
    """/encode's JSON answer and the bound of its size, for a validated body (the route and the fast path)."""
    engine = executor.engine
    size = json_bytes(*[(len(x_raw), engine.manifest.latent_dim)] * 3)
    check_answer(engine, size, lambda: f"3 x {len(x_raw)} x {engine.manifest.latent_dim} numbers")
    encoded = await executor.encode(engine.to_model(x_raw), state, deadline)
    return {"mu": floats(encoded.mu), "sigma": floats(encoded.sigma), "logvar": floats(encoded.logvar)}, size


@router.post("/encode", response_model=EncodeResponse, openapi_extra=request_body_doc(EncodeRequest, images=True))
async def encode(request: Request, executor: ExecutorDep) -> Response:
    """The posterior q(z|x) = N(mu, diag sigma^2) of each instance (JSON) or uploaded image (multipart)."""
    deadline = executor.deadline()
    body, x_raw = await read_body(request, EncodeRequest, executor, deadline)
    return json_answer(*await encode_answer(executor, body, x_raw, state_of(request), deadline))


@router.post(
    "/sample",
    response_model=SampleResponse,
    response_model_exclude_none=True,
    responses={200: PNG},
    openapi_extra=request_body_doc(SampleRequest, images=True),
)
async def sample(request: Request, executor: ExecutorDep) -> Response:
    """Reparameterized draws z = mu + sigma * eps per instance, or draws from the prior without instances."""
    engine, deadline = executor.engine, executor.deadline()
    body, x_raw = await read_body(request, SampleRequest, executor, deadline)
    batch, n, d = 1 if x_raw is None else len(x_raw), body.n_samples, engine.manifest.latent_dim
    engine.check_draws(batch, n)
    if wants_png(request):
        check_png(engine, batch, n)
        sampled = await executor.call(engine.sample, x_raw, n, body.seed, False, deadline=deadline)
        z = sampled.z.reshape(batch * n, d)
        return png(await executor.call(decoded_png, engine, z, batch, n, deadline, deadline=deadline))
    shapes = [(batch, n, d)] + ([(batch, n, *engine.manifest.input_shape)] if body.decode else [])
    size = json_bytes(*shapes)
    check_answer(engine, size, lambda: " + ".join(" x ".join(map(str, s)) for s in shapes) + " numbers")
    sampled = await executor.call(engine.sample, x_raw, n, body.seed, body.decode, deadline, deadline=deadline)
    content = {"z": floats(sampled.z), "seed": sampled.seed}
    if sampled.x is not None:
        content["x"] = floats(sampled.x)
    return json_answer(content, size)


@router.post(
    "/decode",
    response_model=DecodeResponse,
    responses={200: PNG},
    openapi_extra=request_body_doc(DecodeRequest, images=False),
)
async def decode(request: Request, executor: ExecutorDep) -> Response:
    """The mean of p(x|z) in raw units for each latent vector."""
    engine, deadline = executor.engine, executor.deadline()
    body, z = await read_body(request, DecodeRequest, executor, deadline)
    if wants_png(request):
        check_png(engine, 1, len(z))
        return png(await executor.call(decoded_png, engine, z, 1, len(z), deadline, deadline=deadline))
    return json_answer(*await decode_answer(executor, body, z, state_of(request), deadline))


async def decode_answer(
    executor: Executor, body: DecodeRequest, z: np.ndarray, state: dict, deadline: Deadline
) -> tuple[dict, int]:
    """/decode's JSON answer and the bound of its size, for validated latent vectors."""
    engine = executor.engine
    size = json_bytes((len(z), *engine.manifest.input_shape))
    check_answer(engine, size, lambda: f"{len(z)} x {engine.manifest.n_features} numbers")
    x = await executor.decode(z, state, deadline)
    return {"x": floats(x)}, size


@router.post(
    "/elbo",
    response_model=ElboResponse,
    response_model_exclude_none=True,
    openapi_extra=request_body_doc(ElboRequest, images=True),
)
async def elbo(request: Request, executor: ExecutorDep) -> Response:
    """Per-input ELBO and importance-weighted log-likelihood in nats, with calibrated anomaly decisions."""
    deadline = executor.deadline()
    body, x_raw = await read_body(request, ElboRequest, executor, deadline)
    return json_answer(*await elbo_answer(executor, body, x_raw, state_of(request), deadline))


async def elbo_answer(
    executor: Executor, body: ElboRequest, x_raw: np.ndarray, state: dict, deadline: Deadline
) -> tuple[dict, int]:
    """/elbo's JSON answer and the bound of its size, for a validated body."""
    engine = executor.engine
    options = ElboOptions(
        n_samples=body.n_samples,
        seed=body.seed,
        iw_samples=body.iw_samples,
        feature_scores=body.feature_scores,
        threshold=body.threshold,
        fpr=body.fpr,
    )
    prepared = engine.prepare_elbo(x_raw, options)
    shapes = [(len(x_raw),)] * len(PER_INPUT_OUTPUTS)
    shapes += [(len(x_raw), *engine.manifest.input_shape)] if body.feature_scores else []
    size = json_bytes(*shapes)
    check_answer(
        engine, size, lambda: f"{len(x_raw)} instances' scores" + (" and feature scores" if body.feature_scores else "")
    )
    scored = await executor.elbo(prepared, state, deadline)
    return elbo_content(scored), size


def elbo_content(scored: Scored) -> dict:
    """The JSON answer of /elbo: every field of ELBO_OUTPUTS, float arrays as contiguous float64; arrays of a
    few numbers as Python lists instead, the same JSON (float32 values widen to the same float64 either way),
    which orjson writes without its numpy path: for one instance 2.0 µs against 2.9, slower from about 16."""
    content = {}
    for name, float_array in _JSON_FIELDS:
        value = scored.value(name)
        if value is None:  # feature_scores, when not asked for
            continue
        if type(value) is np.ndarray and value.size <= LIST_NUMBERS:
            content[name] = value.tolist()
        else:
            content[name] = floats(value) if float_array else value
    return content


LIST_NUMBERS = 4  # arrays of at most this many numbers go into /elbo's answer as lists (elbo_content)
# Each field of an /elbo answer, and whether it is an array of floats (written as contiguous float64).
_JSON_FIELDS = tuple((o.name, o.kind != "per_request" and o.dtype is float) for o in ELBO_OUTPUTS)


@dataclass(frozen=True)
class JsonRoute:
    """A route whose JSON body is answered by `answer` once validated as `model`: what the fast path serves."""

    model: type[BaseModel]
    answer: Callable[[Executor, Any, np.ndarray, dict, Deadline], Awaitable[tuple[dict, int]]]

    @cached_property
    def takes_npy(self) -> bool:
        """Whether a .npy body may carry its instances (read_body's rule: the model has instances)."""
        return NPY in accepted_types(self.model)


JSON_ROUTES: dict[str, JsonRoute] = {
    "/elbo": JsonRoute(ElboRequest, elbo_answer),
    "/encode": JsonRoute(EncodeRequest, encode_answer),
    "/decode": JsonRoute(DecodeRequest, decode_answer),
}


def heatmap_png(engine: VaeEngine, x_raw: np.ndarray, body: HeatmapRequest, deadline: Deadline) -> bytes:
    """Score the inputs with per-feature scores and draw each input with its scores overlaid (worker pool)."""
    spec = engine.manifest.image
    options = ElboOptions(n_samples=body.n_samples, seed=body.seed, iw_samples=1, feature_scores=True)
    scored = engine.elbo(x_raw, options, deadline=deadline)
    shape = (len(x_raw), spec.channels, spec.height, spec.width)
    pixels = to_pixels(x_raw.reshape(shape), spec.max_value)
    per_pixel = scored.feature_scores.reshape(shape).sum(axis=1)  # (B, H, W): channels add up
    overlays = [heatmap_overlay(p, s) for p, s in zip(pixels, per_pixel, strict=False)]
    return png_bytes(grid(np.stack(overlays), 1, len(overlays)))


@router.post(
    "/heatmap",
    responses={200: {"content": {"image/png": {}}, "description": "the overlays side by side, one per input"}},
    response_class=Response,
    openapi_extra=request_body_doc(HeatmapRequest, images=True),
)
async def heatmap(request: Request, executor: ExecutorDep) -> Response:
    """A PNG of each input with its per-pixel anomaly scores (shares of -reconstruction) overlaid."""
    engine, deadline = executor.engine, executor.deadline()
    if engine.manifest.image is None:
        raise NotAcceptable(f"this model takes rows shaped {engine.manifest.input_shape}, not images; use /elbo")
    body, x_raw = await read_body(request, HeatmapRequest, executor, deadline)
    engine.check_draws(len(x_raw), body.n_samples, 1)
    check_png(engine, 1, len(x_raw), channels=3)
    return png(await executor.call(heatmap_png, engine, x_raw, body, deadline, deadline=deadline))
