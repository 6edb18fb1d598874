"""Typed dependencies for the routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import Depends, Request
from fastapi.responses import JSONResponse

import secrets

from service.engine import VaeEngine
from service.executor import Executor
from service.live_model import LiveModel
from service.errors import ModelNotReady, Unauthorized


# The dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in the thread pool,
# a thread hop per dependency per request for what is an attribute lookup.
async def get_live(request: Request) -> AsyncIterator[LiveModel]:
    """The model version that answers this request, taken once and kept to the end (FastAPI caches it per
    request), so a reload in between never mixes two versions; its version goes out as X-Model-Version."""
    live = request.app.state.host.current
    if live is None:
        raise ModelNotReady("the model is still loading; retry when GET /readyz returns 200")
    request.scope.setdefault("state", {})["model_version"] = live.version
    with live.serving():
        yield live


LiveDep = Annotated[LiveModel, Depends(get_live)]


async def get_engine(live: LiveDep) -> VaeEngine:
    return live.engine


async def get_executor(live: LiveDep) -> Executor:
    return live.executor


EngineDep = Annotated[VaeEngine, Depends(get_engine)]
ExecutorDep = Annotated[Executor, Depends(get_executor)]


async def require_api_key(request: Request) -> None:
    """With VAE_API_KEY set, every route but the health checks needs `Authorization: Bearer <key>`."""
    key = request.app.state.settings.api_key
    if key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), key.get_secret_value().encode()):
        raise Unauthorized("this service needs an API key: send the header `Authorization: Bearer <key>`")


class ArrayJSONResponse(JSONResponse):
    """JSON with numpy arrays serialised natively by orjson (no per-number Python objects)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def floats(array: np.ndarray) -> np.ndarray:
    """C-contiguous float64, the form orjson serialises."""
    return np.ascontiguousarray(array, dtype=np.float64)
