"""Request bodies that arrive as JSON, as multipart/form-data image uploads, or as a binary .npy array,
validated the same way.

A multipart form carries the JSON request's options as form fields (each read as a JSON value, so
`n_samples=8` is the number 8) and one or more PNG or JPEG files in the field `files`. A binary request
(`Content-Type: application/x-npy`) is one .npy array of instances, (B, D) or (B, *input_shape), with the
options in the query string (`/elbo?n_samples=8&seed=1`): no JSON parsing at all for large batches.

Any other Content-Type gets 415: a `text/plain` body read as JSON would let any web page POST here without
a CORS preflight. A body larger than INLINE_BYTES is parsed in the worker pool, within the request's
deadline, and a JSON body is measured (json_value_bound) before it is parsed, so its Python objects stay
within a constant of what the largest valid request needs.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from service.core.engine import Deadline, VaeEngine
from service.core.errors import InvalidInput, LimitExceeded, MalformedRequest, UnsupportedMediaType
from service.core.images import decode_upload
from service.core.inputs import json_value_bound, npy_float64_bytes, parse_instances, parse_latents, read_npy
from service.http.executor import Executor

Body = TypeVar("Body", bound=BaseModel)
FILES_FIELD = "files"
JSON = "application/json"
NPY = "application/x-npy"
MULTIPART = "multipart/form-data"
INLINE_BYTES = 64 * 1024  # bodies up to this size are parsed on the event loop: a thread hop costs more
# .npy bodies are read in place and converted once to float64 (read_npy): up to a megabyte of float64 that is
# a few passes of ~0.1-0.3 ms, less than the worker-pool hop.
INLINE_NPY_BYTES = 1 << 20
MAX_FORM_VALUE_CHARS = 256  # a form field holds one option (a number, true or false), never a batch
# Room for the options and the structure around the instances in json_value_bound's count.
JSON_VALUE_SLACK = 4096


def _validated(model: type[Body], data: Any) -> Body:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def media_type(request: Request) -> str:
    """The Content-Type without its parameters, lower case; '' when there is none."""
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def accepted_types(model: type[BaseModel]) -> list[str]:
    """JSON always; a body with instances may also come as .npy or as a multipart form of images."""
    return [JSON, NPY, MULTIPART] if "instances" in model.model_fields else [JSON]


def check_media_type(request: Request, accepted: list[str]) -> str:
    """The request's media type if `accepted` has it, else 415 naming what is."""
    kind = media_type(request)
    if kind not in accepted:
        given = repr(request.headers["content-type"]) if "content-type" in request.headers else "missing"
        kinds = accepted[0] if len(accepted) == 1 else f"{', '.join(accepted[:-1])} or {accepted[-1]}"
        raise UnsupportedMediaType(f"Content-Type: {given}; {request.url.path} takes {kinds}")
    return kind


def max_json_values(engine: VaeEngine) -> int:
    """The most JSON values a body may hold: twice what the largest valid batch needs, and room for options."""
    manifest = engine.manifest
    return 2 * engine.limits.max_instances * max(manifest.n_features, manifest.latent_dim) + JSON_VALUE_SLACK


def load_json(raw: bytes | memoryview, engine: VaeEngine, what: str = "the body") -> Any:
    """The JSON value of a body, measured before it is parsed; 413 for more values than any request needs,
    400 for anything that is not JSON, however deeply nested."""
    most = max_json_values(engine)
    # json_value_bound counts at most one value per byte, plus one: a body no longer than that cannot be over.
    values = json_value_bound(raw) if len(raw) >= most else 0
    if values > most:
        raise LimitExceeded(
            f"{what} holds up to {values} JSON values; a request to this model takes at most {most} "
            "(twice VAE_MAX_INSTANCES x the values per instance): send fewer instances per request, or a .npy body"
        )
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):  # orjson stops at 1024 levels, and the fallback would recurse to a RecursionError
            raise MalformedRequest(f"{what} is not valid JSON: {exc}") from None
    # What orjson refuses but the standard library takes (NaN and Infinity literals, which validation
    # then names, integers beyond 64 bits, UTF-16 bodies), or the standard library's own message.
    try:
        return json.loads(bytes(raw))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise MalformedRequest(f"{what} is not valid JSON: {reason}") from None


async def read_body(
    request: Request, model: type[Body], executor: Executor, deadline: Deadline
) -> tuple[Body, np.ndarray | None]:
    """The validated options and the batch: instances as (B, D) raw values, or z as (B, d) float32 latent
    vectors (None when the body has neither)."""
    kind = check_media_type(request, accepted_types(model))
    if kind == MULTIPART:
        return await _read_form(request, model, executor, deadline)
    if kind == NPY:
        body = npy_options(request.query_params.multi_items(), model)
        return body, await parse_npy(await read_raw(request), executor, deadline)
    return await parse_json(await read_raw(request), model, executor, deadline)


async def parse_npy(raw: bytes | memoryview, executor: Executor, deadline: Deadline) -> np.ndarray:
    """A .npy body's instances (read_npy), in the worker pool when it is large."""
    engine = executor.engine
    input_shape, max_instances = engine.manifest.input_shape, engine.limits.max_instances
    size = npy_float64_bytes(raw)  # what it becomes: a uint8 body grows 8x in the conversion
    return await _off_the_loop(
        executor, deadline, size, read_npy, raw, input_shape, max_instances, inline_bytes=INLINE_NPY_BYTES
    )


async def parse_json(
    raw: bytes | memoryview, model: type[Body], executor: Executor, deadline: Deadline
) -> tuple[Body, np.ndarray | None]:
    """A JSON body's validated options and batch (parse_json_body), in the worker pool when it is large."""
    return await _off_the_loop(executor, deadline, len(raw), parse_json_body, raw, model, executor.engine)


async def read_raw(request: Request) -> bytes | memoryview:
    """The body, copied a chunk at a time into one buffer of its declared length as it arrives. Starlette's
    request.body() joins the chunks at the end, one memcpy of up to 64 MiB on the event loop holding the GIL
    (tens of milliseconds, far more on a busy machine); without a Content-Length it is the way."""
    declared = request.headers.get("content-length", "")
    if not declared.isdigit():
        return await request.body()
    buffer = np.empty(int(declared), dtype=np.uint8)  # not zeroed: pages are touched only as chunks land
    filled = 0
    async for chunk in request.stream():
        if filled + len(chunk) > len(buffer):
            raise MalformedRequest(f"the body is longer than its Content-Length of {len(buffer)} bytes")
        buffer[filled : filled + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
        filled += len(chunk)
    if filled != len(buffer):
        raise MalformedRequest(f"the body has {filled} bytes, not the {len(buffer)} its Content-Length says")
    return memoryview(buffer)


async def _off_the_loop(executor: Executor, deadline: Deadline, size: int, fn, *args, inline_bytes: int = INLINE_BYTES):
    """fn(*args) here when the body is small, else in the worker pool within the request's deadline."""
    if size <= inline_bytes:
        return fn(*args)
    return await executor.call(fn, *args, deadline=deadline)


def parse_json_body(raw: bytes | memoryview, model: type[Body], engine: VaeEngine) -> tuple[Body, np.ndarray | None]:
    body = _validated(model, load_json(raw, engine))
    limits, manifest = engine.limits, engine.manifest
    if getattr(body, "instances", None) is not None:
        return body, parse_instances(body.instances, manifest.input_shape, limits.max_instances)
    if getattr(body, "z", None) is not None:
        return body, parse_latents(body.z, manifest.latent_dim, limits.max_instances)
    return body, None


def _form_value(key: str, text: str) -> Any:
    """A form field as the JSON value it spells ('8' -> 8, 'true' -> True), else the text itself."""
    if len(text) > MAX_FORM_VALUE_CHARS:
        raise InvalidInput(
            f"{key}: {len(text)} characters; a form field holds one option, a number or true or false "
            f"(at most {MAX_FORM_VALUE_CHARS} characters)"
        )
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def npy_options(fields: list[tuple[str, str]], model: type[Body]) -> Body:
    """A .npy request's options, from its query string's fields."""
    if any(key == "instances" for key, _ in fields):
        raise InvalidInput("send instances in the .npy body, not in the query string")
    return _validated(model, {key: _form_value(key, value) for key, value in fields} | {"instances": []})


async def _read_form(
    request: Request, model: type[Body], executor: Executor, deadline: Deadline
) -> tuple[Body, np.ndarray]:
    engine = executor.engine
    spec = engine.manifest.image
    if spec is None:
        raise InvalidInput(
            f"this model takes rows shaped {engine.manifest.input_shape}, not images; send JSON instances"
        )
    form = await request.form(max_files=engine.limits.max_instances, max_fields=100)
    uploads = [item for key, item in form.multi_items() if key == FILES_FIELD]
    stray = [key for key, item in form.multi_items() if key != FILES_FIELD and not isinstance(item, str)]
    if stray:
        raise InvalidInput(f"{stray[0]}: a file in this form field; images go in the field '{FILES_FIELD}'")
    texts = [(key, value) for key, value in form.multi_items() if key != FILES_FIELD]
    if any(key == "instances" for key, _ in texts):
        raise InvalidInput("send instances as JSON or as image files, not both")
    if not uploads or any(isinstance(u, str) for u in uploads):
        raise InvalidInput(f"{FILES_FIELD}: expected one or more PNG or JPEG files in the form field '{FILES_FIELD}'")
    body = _validated(model, {key: _form_value(key, value) for key, value in texts} | {"instances": []})
    named = [(upload, upload.filename or f"{FILES_FIELD}[{i}]") for i, upload in enumerate(uploads)]
    return body, await executor.call(_decode_uploads, named, spec, deadline, deadline=deadline)


def _decode_uploads(named: list, spec, deadline: Deadline) -> np.ndarray:
    """The uploaded images as (B, D) raw units, one at a time (in the worker pool), stopping at the deadline."""
    rows = []
    for upload, name in named:
        deadline.check()
        upload.file.seek(0)
        rows.append(decode_upload(upload.file.read(), name, spec))
    return np.stack(rows)


def request_body_doc(model: type[BaseModel], images: bool) -> dict:
    """OpenAPI text for a body read by read_body: the JSON model, and the multipart form when images are allowed."""
    content = {JSON: {"schema": model.model_json_schema()}}
    if "instances" in model.model_fields:
        content[NPY] = {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "one .npy array of instances; options in the query string",
            }
        }
    if images:
        options = {k: v for k, v in model.model_json_schema()["properties"].items() if k != "instances"}
        content[MULTIPART] = {
            "schema": {
                "type": "object",
                "properties": {
                    FILES_FIELD: {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "PNG or JPEG images, for models that take images",
                    },
                    **options,
                },
                "required": [FILES_FIELD],
            }
        }
    return {"requestBody": {"required": True, "content": content}}
