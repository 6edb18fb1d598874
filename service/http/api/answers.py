"""Answers whose size is known before any work is done, and built off the event loop when they are large.

Every route computes an upper bound of its answer's bytes from the request alone (instances, draws, the
model's shapes) and refuses it with 413 when the bound exceeds VAE_MAX_RESPONSE_BYTES, so no request can
make the server build an answer of gigabytes. The bound is exact in form, not a guess (json_writer.json_bytes:
every number orjson writes takes at most 25 bytes with its comma), and the bundled client splits its calls
with the same arithmetic (client/vae_client/client.py), so its requests are never refused.

A large answer is streamed: written a chunk at a time in the worker pool (Starlette iterates a plain iterator
there) and sent as it is written, so it is never whole in memory and never holds the GIL for long.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi.responses import Response, StreamingResponse

from service.core.engine import VaeEngine
from service.core.errors import LimitExceeded
from service.http.api.deps import ArrayJSONResponse
from service.http.json_writer import chunks, json_parts

INLINE_BYTES = 1 << 20  # answers bounded by this are serialised on the event loop: a thread hop costs more


def check_answer(engine: VaeEngine, size: int, what: Callable[[], str]) -> None:
    """413 before any work when an answer of at most `size` bytes may exceed VAE_MAX_RESPONSE_BYTES; `what()`
    describes the answer in the message (made only for a refusal: most requests pass, on the hot path)."""
    limit = engine.limits.max_response_bytes
    if size > limit:
        raise LimitExceeded(
            f"the answer ({what()}) may take up to {size} bytes, over the limit of {limit} bytes "
            "(VAE_MAX_RESPONSE_BYTES); send fewer instances or draws per request"
        )


def json_answer(content: dict, size: int) -> Response:
    """`content` as JSON: written at once when its bound `size` is small, else streamed."""
    if size <= INLINE_BYTES:
        return ArrayJSONResponse(content)
    return StreamingResponse(chunks(json_parts(content)), media_type="application/json")
