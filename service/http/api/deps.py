"""Typed dependencies for the routers."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import Depends, Request
from fastapi.responses import JSONResponse, Response

from service.core.engine import VaeEngine
from service.core.errors import ModelNotReady
from service.http.executor import Executor
from service.http.live_model import LiveModel


def _live_model(request: Request) -> LiveModel:
    """The model version that answers this request, taken once and kept to the end, so a reload in between
    never mixes two versions. The ObservabilityMiddleware names it in X-Model-Version and releases it when
    the response is done: cheaper than a `yield` dependency, whose exit stack cost 14% of the digits
    model's requests per second at c=64."""
    state = request.scope.setdefault("state", {})
    live = state.get("live_model")
    if live is None:
        live = request.app.state.host.current
        if live is None:
            raise ModelNotReady("the model is still loading; retry when GET /readyz returns 200")
        state["live_model"] = live.acquire()
    return live


# The dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in the thread pool,
# a thread hop per dependency per request for what is an attribute lookup.
# Each reads the request itself rather than depending on get_live: FastAPI solves every level of nested
# dependencies anew per request, at a cost measurable on the digits model.
async def get_live(request: Request) -> LiveModel:
    return _live_model(request)


async def get_engine(request: Request) -> VaeEngine:
    return _live_model(request).engine


async def get_executor(request: Request) -> Executor:
    return _live_model(request).executor


LiveDep = Annotated[LiveModel, Depends(get_live)]
EngineDep = Annotated[VaeEngine, Depends(get_engine)]
ExecutorDep = Annotated[Executor, Depends(get_executor)]


async def render_error(request: Request, exc: Exception) -> Response:
    """The app's own answer to `exc`, from the handler registered for its class (or a base class); raises
    `exc` again when no handler takes it."""
    handlers = request.app.exception_handlers
    handler = next((handlers[cls] for cls in type(exc).__mro__ if cls in handlers), None)
    if handler is None:
        raise exc
    return await handler(request, exc)


class ArrayJSONResponse(JSONResponse):
    """JSON with numpy arrays serialised natively by orjson (no per-number Python objects)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def floats(array: np.ndarray) -> np.ndarray:
    """C-contiguous float64, the form orjson serialises."""
    return np.ascontiguousarray(array, dtype=np.float64)
