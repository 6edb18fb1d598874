"""Answers whose size is known before any work is done, and built off the event loop when they are large.

Every route computes an upper bound of its answer's bytes from the request alone (instances, draws, the
model's shapes) and refuses it with 413 when the bound exceeds VAE_MAX_RESPONSE_BYTES, so no request can
make the server build an answer of gigabytes. The bound is exact in form, not a guess (json_writer.json_bytes:
every number orjson writes takes at most 25 bytes with its comma), and the bundled client splits its calls
with the same arithmetic (service/client.py), so its requests are never refused.
"""

from __future__ import annotations

from fastapi.responses import Response

from service.api.deps import ArrayJSONResponse
from service.engine import Deadline, VaeEngine
from service.errors import LimitExceeded
from service.executor import Executor
from service.json_writer import write_json

INLINE_BYTES = 1 << 20  # answers bounded by this are serialised on the event loop: a thread hop costs more


def check_answer(engine: VaeEngine, size: int, what: str) -> None:
    """413 before any work when an answer of at most `size` bytes may exceed VAE_MAX_RESPONSE_BYTES."""
    limit = engine.limits.max_response_bytes
    if size > limit:
        raise LimitExceeded(
            f"the answer ({what}) may take up to {size} bytes, over the limit of {limit} bytes "
            "(VAE_MAX_RESPONSE_BYTES); send fewer instances or draws per request"
        )


async def json_answer(executor: Executor, content: dict, size: int, deadline: Deadline) -> Response:
    """`content` as JSON: on the event loop when its bound `size` is small, else written in the worker pool."""
    if size <= INLINE_BYTES:
        return ArrayJSONResponse(content)
    return Response(await executor.call(write_json, content, deadline=deadline), media_type="application/json")
