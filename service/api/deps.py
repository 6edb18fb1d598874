"""Typed dependencies for the routers."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from service.engine import VaeEngine
from service.errors import ModelNotReady


def get_engine(request: Request) -> VaeEngine:
    engine = request.app.state.engine
    if engine is None:
        raise ModelNotReady("the model is still loading; retry when GET /readyz returns 200")
    return engine


EngineDep = Annotated[VaeEngine, Depends(get_engine)]


class ArrayJSONResponse(JSONResponse):
    """JSON with numpy arrays serialised natively by orjson (no per-number Python objects)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def floats(array: np.ndarray) -> np.ndarray:
    """C-contiguous float64, the form orjson serialises."""
    return np.ascontiguousarray(array, dtype=np.float64)
