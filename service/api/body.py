"""Request bodies that arrive as JSON, as multipart/form-data image uploads, or as a binary .npy array,
validated the same way.

A multipart form carries the JSON request's options as form fields (each read as a JSON value, so
`n_samples=8` is the number 8) and one or more PNG or JPEG files in the field `files`. A binary request
(`Content-Type: application/x-npy`) is one .npy array of instances, (B, D) or (B, *input_shape), with the
options in the query string (`/elbo?n_samples=8&seed=1`): no JSON parsing at all for large batches.
"""

from __future__ import annotations

import io
import json
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from service.engine import VaeEngine
from service.errors import InvalidInput, MalformedRequest
from service.images import decode_upload
from service.inputs import check_array, parse_instances

Body = TypeVar("Body", bound=BaseModel)
FILES_FIELD = "files"
NPY = "application/x-npy"


def _validated(model: type[Body], data: Any) -> Body:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def _form_value(text: str) -> Any:
    """A form field as the JSON value it spells ('8' -> 8, 'true' -> True), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


async def read_body(request: Request, model: type[Body], engine: VaeEngine) -> tuple[Body, np.ndarray | None]:
    """The validated options and the instances as (B, D) raw values (None when the body has none)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        return await _read_form(request, model, engine)
    if content_type.startswith(NPY):
        return await _read_npy(request, model, engine)
    raw = await request.body()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # What orjson refuses but the standard library takes (NaN and Infinity literals, which validation
        # then names, integers beyond 64 bits, UTF-16 bodies), or the standard library's own message.
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedRequest(f"the body is not valid JSON: {exc}") from None
    body = _validated(model, data)
    instances = getattr(body, "instances", None)
    if instances is None:
        return body, None
    return body, parse_instances(instances, engine.manifest.input_shape, engine.limits.max_instances)


async def _read_npy(request: Request, model: type[Body], engine: VaeEngine) -> tuple[Body, np.ndarray]:
    fields = {key: _form_value(value) for key, value in request.query_params.multi_items()}
    if "instances" in fields:
        raise InvalidInput("send instances in the .npy body, not in the query string")
    body = _validated(model, fields | {"instances": []})
    try:
        array = np.load(io.BytesIO(await request.body()), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise MalformedRequest(f"the body is not a readable .npy array: {exc}") from None
    return body, check_array(array, engine.manifest.input_shape, engine.limits.max_instances)


async def _read_form(request: Request, model: type[Body], engine: VaeEngine) -> tuple[Body, np.ndarray]:
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
    fields = {key: _form_value(value) for key, value in form.multi_items() if key != FILES_FIELD}
    if "instances" in fields:
        raise InvalidInput("send instances as JSON or as image files, not both")
    if not uploads or any(isinstance(u, str) for u in uploads):
        raise InvalidInput(f"{FILES_FIELD}: expected one or more PNG or JPEG files in the form field '{FILES_FIELD}'")
    body = _validated(model, fields | {"instances": []})
    rows = [
        decode_upload(await upload.read(), upload.filename or f"{FILES_FIELD}[{i}]", spec)
        for i, upload in enumerate(uploads)
    ]
    return body, np.stack(rows)


def request_body_doc(model: type[BaseModel], images: bool) -> dict:
    """OpenAPI text for a body read by read_body: the JSON model, and the multipart form when images are allowed."""
    content = {"application/json": {"schema": model.model_json_schema()}}
    if "instances" in model.model_fields:
        content[NPY] = {"schema": {"type": "string", "format": "binary",
                                   "description": "one .npy array of instances; options in the query string"}}
    if images:
        options = {k: v for k, v in model.model_json_schema()["properties"].items() if k != "instances"}
        content["multipart/form-data"] = {
            "schema": {
                "type": "object",
                "properties": {
                    FILES_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"},
                                  "description": "PNG or JPEG images, for models that take images"},
                    **options,
                },
                "required": [FILES_FIELD],
            }
        }
    return {"requestBody": {"required": True, "content": content}}
