"""Tensors of the Open Inference Protocol v2 (the KServe / Triton / MLServer REST "v2" protocol), with its
binary tensor data extension. Bytes and a header in, arrays out; arrays in, bytes out. Knows nothing of HTTP
frameworks or of the model.

A body is one JSON inference request, or, with the header `Inference-Header-Content-Length: n`, n bytes of
JSON followed by the binary data of the inputs that say `parameters.binary_data_size`, in their order.
Binary tensors are little-endian, row-major, without padding; a BOOL element is one byte, 0 or 1.
Spec: kserve/kserve docs/predict-api/v2/required_api.md and triton-inference-server/server
docs/protocol/extension_binary_data.md.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from typing import Annotated, Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictInt, WithJsonSchema

from service.core.errors import InvalidInput, LimitExceeded, MalformedRequest, UnsupportedMediaType
from service.core.inputs import FLOAT32_MAX, as_float_array, json_value_bound
from service.http.json_writer import CHUNK_BYTES, JSON_NUMBER_BYTES, JSON_OVERHEAD_BYTES, chunks, json_parts, write_json

HEADER_LENGTH = "inference-header-content-length"
BINARY = "application/octet-stream"  # the media type of a body, or an answer, with binary tensor data
# The input datatypes taken, as little-endian numpy types; every float output is FP64 (what the native API computes).
INPUT_TYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
OUTPUT_TYPES = {"FP64": np.dtype("<f8"), "BOOL": np.dtype(np.bool_)}


# What the JSON data of a tensor may be, for the OpenAPI document: numbers, flat in row-major order or nested as
# the shape (service/core/inputs.py's as_float_array reads them and names the first thing that is not a number).
TENSOR_DATA_SCHEMA = {
    "type": "array",
    "minItems": 1,
    "items": {"type": ["number", "array"]},
    "description": "the tensor's elements, flat in row-major order or nested as its shape",
}


class RequestInput(BaseModel):
    """$request_input: one input tensor; `data` is absent when the tensor travels as binary data."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the input's name, as the model's metadata lists it")
    shape: list[Annotated[StrictInt, Field(ge=0)]]
    datatype: Annotated[str, WithJsonSchema({"enum": list(INPUT_TYPES)})]  # read_inputs names any other
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        json_schema_extra={
            "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
            "description": "binary_data_size: the tensor's bytes in the binary data after the JSON (other keys "
            "are ignored)",
        },
    )
    data: Annotated[Any, WithJsonSchema({"anyOf": [TENSOR_DATA_SCHEMA, {"type": "null"}]})] = None


class RequestOutput(BaseModel):
    """$request_output: an output wanted, and whether it comes back as binary data."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="one of the model's outputs")
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        json_schema_extra={
            "properties": {"binary_data": {"type": "boolean"}},
            "description": "binary_data: this output as binary data after the JSON (other keys are ignored)",
        },
    )


class InferenceRequest(BaseModel):
    """$inference_request. Other top-level fields (Triton's clients send model_name) are ignored."""

    id: str | None = Field(None, description="echoed in the answer")
    parameters: dict[str, Any] = Field(default_factory=dict)  # documented per model by service/http/api/oip.py
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = Field(None, description="the outputs wanted; all of them when absent")


# Content-Encoding -> zlib's wbits: gzip's wrapper, or zlib's (HTTP's "deflate", what tritonclient sends).
ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def decompress(body: bytes | memoryview, encoding: str | None, limit: int) -> bytes | memoryview:
    """The body as sent before its Content-Encoding (gzip or deflate), at most `limit` bytes once decompressed:
    beyond it 413, without ever holding more than limit + 1 bytes (a small zip bomb stays small)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ENCODINGS:
        raise UnsupportedMediaType(f"Content-Encoding: {encoding!r}; expected gzip, deflate or identity")
    inflater = zlib.decompressobj(ENCODINGS[encoding])
    try:
        plain = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise MalformedRequest(f"the body is not valid {encoding} data ({exc})") from None
    if len(plain) > limit or inflater.unconsumed_tail:
        raise LimitExceeded(
            f"the body decompresses to more than {limit} bytes (VAE_MAX_BODY_BYTES); send it in smaller requests"
        )
    if not inflater.eof:
        raise MalformedRequest(f"the body is cut short: its {encoding} data does not end")
    return plain


def split_body(body: bytes | memoryview, header_length: str | None, max_values: int) -> tuple[Any, memoryview | None]:
    """The JSON header (parsed) and the binary data after it; None without Inference-Header-Content-Length.

    The header is measured before it is parsed: more than max_values JSON values gets 413."""
    if header_length is None:
        try:
            return _json(body, max_values), None
        except MalformedRequest as exc:
            if not _binary_after_json(body):
                raise
            raise MalformedRequest(
                f"{exc}; a body with binary tensor data needs the header Inference-Header-Content-Length, "
                "the length in bytes of the JSON before the binary data"
            ) from None
    if not header_length.strip().isdigit():
        raise MalformedRequest(
            f"Inference-Header-Content-Length: expected the JSON header's length in bytes, got {header_length!r}"
        )
    length = int(header_length)
    if length > len(body):
        raise MalformedRequest(
            f"Inference-Header-Content-Length: {length} bytes of JSON header, but the body has only {len(body)} bytes"
        )
    return _json(body[:length], max_values), memoryview(body)[length:]


def _binary_after_json(body: bytes | memoryview) -> bool:
    """Whether the body looks like a JSON object that says binary_data_size, then something more."""
    return bytes(body[:1]) == b"{" and b'"binary_data_size"' in bytes(body[: 1 << 16])


def _json(header: bytes | memoryview, max_values: int) -> Any:
    values = json_value_bound(header)
    if values > max_values:
        raise LimitExceeded(
            f"the inference header holds up to {values} JSON values; a request to this model takes at most "
            f"{max_values} (twice VAE_MAX_INSTANCES x the values per instance): send fewer instances per request, "
            "or the tensors as binary data"
        )
    try:
        return orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"the inference header is not valid JSON: {exc}") from None


def read_inputs(inputs: list[RequestInput], binary: memoryview | None) -> dict[str, np.ndarray]:
    """Each input as an array of its shape and datatype, from its JSON data or its share of the binary data."""
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in inputs:
        name = tensor.name
        dtype = INPUT_TYPES.get(tensor.datatype)
        if dtype is None:
            raise InvalidInput(f"{name}: datatype {tensor.datatype} is not supported; expected FP32 or FP64")
        size = tensor.parameters.get("binary_data_size")
        if size is None:
            arrays[name] = _from_json(tensor, dtype)
            continue
        if tensor.data is not None:
            raise InvalidInput(f"{name}: give data or parameters.binary_data_size, not both")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(f"{name}: parameters.binary_data_size: expected a number of bytes, got {size!r}")
        if binary is None:
            raise MalformedRequest(
                f"{name}: parameters.binary_data_size needs the header Inference-Header-Content-Length, "
                "the length of the JSON before the binary data"
            )
        if offset + size > len(binary):
            raise MalformedRequest(
                f"{name}: parameters.binary_data_size is {size} bytes, but only {len(binary) - offset} bytes "
                "of binary data remain after the JSON header"
            )
        arrays[name] = _from_bytes(tensor, dtype, binary[offset : offset + size])
        offset += size
    if binary is not None and offset != len(binary):
        raise MalformedRequest(
            f"the body has {len(binary) - offset} bytes of binary data after the JSON header that no input claims "
            "(each binary input gives its parameters.binary_data_size)"
        )
    return arrays


def _from_json(tensor: RequestInput, dtype: np.dtype) -> np.ndarray:
    """JSON data, flat in row-major order or nested as the shape, coerced to the tensor's datatype."""
    if tensor.data is None:
        raise InvalidInput(
            f"{tensor.name}: no data; give data, or parameters.binary_data_size with the binary data after the JSON"
        )
    array = as_float_array(tensor.data, tensor.name)
    count = math.prod(tensor.shape)
    if array.size != count:
        raise InvalidInput(f"{tensor.name}: shape {tensor.shape} has {count} elements but data has {array.size}")
    if array.ndim > 1 and list(array.shape) != tensor.shape:
        raise InvalidInput(
            f"{tensor.name}: data nested as {list(array.shape)} does not match shape {tensor.shape}; "
            "send it flat in row-major order or nested as the shape"
        )
    if dtype.itemsize == 4 and np.any(np.abs(array) > FLOAT32_MAX):  # cast, it would become inf
        index = int(np.argwhere(np.abs(array.reshape(-1)) > FLOAT32_MAX)[0, 0])
        raise InvalidInput(
            f"{tensor.name}: element {index} is {array.reshape(-1)[index]:g}, beyond FP32, the tensor's datatype "
            f"(largest magnitude {FLOAT32_MAX:g})"
        )
    return array.astype(dtype).reshape(tensor.shape)


def _from_bytes(tensor: RequestInput, dtype: np.dtype, chunk: memoryview) -> np.ndarray:
    expected = math.prod(tensor.shape) * dtype.itemsize
    if len(chunk) != expected:
        raise InvalidInput(
            f"{tensor.name}: shape {tensor.shape} of {tensor.datatype} takes {expected} bytes, "
            f"but parameters.binary_data_size is {len(chunk)}"
        )
    return np.frombuffer(chunk, dtype=dtype).reshape(tensor.shape)


def datatype_of(array: np.ndarray) -> str:
    return "BOOL" if array.dtype == np.bool_ else "FP64"


def response_bound(tensors: list[tuple[Any, bool, str]]) -> int:
    """The most bytes an answer of these (shape, as binary, name) outputs takes: FP64 data as 8 bytes a number
    binary, or as JSON_NUMBER_BYTES in JSON (BOOL as fewer), and each tensor's own JSON."""
    total = JSON_OVERHEAD_BYTES
    for shape, binary, _ in tensors:
        total += math.prod(shape) * (8 if binary else JSON_NUMBER_BYTES) + 256
    return total


def _tensors(outputs: list[tuple[str, np.ndarray, bool]]) -> tuple[list[dict], list[np.ndarray]]:
    """The outputs' tensor descriptions, and the flat arrays whose bytes follow the JSON header (binary outputs).

    JSON data goes flat in row-major order, with the shape beside it."""
    tensors, binary = [], []
    for name, array, as_binary in outputs:
        datatype = datatype_of(array)
        array = np.ascontiguousarray(array, dtype=OUTPUT_TYPES[datatype])
        tensor = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if as_binary:
            binary.append(array.reshape(-1))
            tensor["parameters"] = {"binary_data_size": array.nbytes}
        else:
            tensor["data"] = array.reshape(-1)
        tensors.append(tensor)
    return tensors, binary


def response_parts(
    head: dict, outputs: list[tuple[str, np.ndarray, bool]]
) -> tuple[Iterator[bytes], int | None, int | None]:
    """The response body of encode_response in chunks, for streaming: (chunks, the body's length when any output
    is binary, the JSON header's length when any output is binary). Binary data goes a slice at a time."""
    tensors, binary = _tensors(outputs)
    if not binary:
        return chunks(json_parts({**head, "outputs": tensors})), None, None
    header = write_json({**head, "outputs": tensors})

    def body() -> Iterator[bytes]:
        yield header
        for flat in binary:
            step = max(1, CHUNK_BYTES // flat.itemsize)
            for start in range(0, len(flat), step):
                yield flat[start : start + step].tobytes()

    return body(), len(header) + sum(flat.nbytes for flat in binary), len(header)


def encode_response(head: dict, outputs: list[tuple[str, np.ndarray, bool]]) -> tuple[bytes, int | None]:
    """The response body for (name, array, as binary) outputs, and the JSON header's length when any is binary."""
    tensors, binary = _tensors(outputs)
    header = write_json({**head, "outputs": tensors})
    if not binary:
        return header, None
    return header + b"".join(flat.tobytes() for flat in binary), len(header)
