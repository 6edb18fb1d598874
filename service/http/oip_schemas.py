"""The Open Inference Protocol v2 bodies as the OpenAPI document shows them: answers, metadata, health and
errors. Documentation only: the routes (service/http/api/oip.py) write their answers themselves, for speed,
and tests/service/test_openapi.py validates real answers against these schemas. The request is
service/http/oip_tensors.py's InferenceRequest, which also parses it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from service.core.engine import ELBO_OUTPUTS
from service.http.oip_tensors import OUTPUT_TYPES


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorMetadata(Closed):
    """$metadata_tensor: -1 in the shape for the batch axis (and the draws axis of sample's outputs)."""

    name: str
    datatype: str = Field(description="FP64 for inputs (FP32 is taken too), FP64 or BOOL for outputs")
    shape: list[int]


class ModelMetadata(Closed):
    """$metadata_model_response."""

    name: str = Field(description="<manifest name>-<operation>: encode, sample, decode or elbo")
    versions: list[str] = Field(description="the one version served, the manifest's hash")
    platform: Literal["onnx_onnxv1", "pytorch_torchscript"]
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(Closed):
    """$metadata_server_response."""

    name: str
    version: str
    extensions: list[str]


class ServerLive(Closed):
    live: Literal[True]


class ServerReady(Closed):
    ready: Literal[True]


class ProtocolError(BaseModel):
    """$error: every error of the v2 routes. A 413 for a body over VAE_MAX_BODY_BYTES, answered before any
    route runs, also carries the native `code`."""

    error: str = Field(description="what was expected and what arrived")


class ResponseOutputParameters(Closed):
    binary_data_size: int = Field(ge=0, description="this output's bytes in the binary data after the JSON")


class ResponseOutput(Closed):
    """$response_output: `data` as JSON, or `parameters.binary_data_size` bytes of binary data."""

    name: str
    datatype: Literal[tuple(OUTPUT_TYPES)]  # type: ignore[valid-type]
    shape: list[int]
    data: list[Any] | None = Field(None, json_schema_extra={"items": {"type": ["number", "boolean"]}, "minItems": 0})
    parameters: ResponseOutputParameters | None = None


# sample's seed and elbo's per-request fields (service/core/engine.py's ELBO_OUTPUTS), declared once there.
PER_REQUEST = [o for o in ELBO_OUTPUTS if o.kind == "per_request"]
ResponseParameters = create_model(
    "ResponseParameters",
    __base__=Closed,
    **{o.name: (o.dtype | None, Field(None, description=o.description)) for o in PER_REQUEST},
)


class InferenceResponse(Closed):
    """$inference_response. With binary outputs, this JSON is the first Inference-Header-Content-Length bytes
    of an application/octet-stream answer, and the outputs' binary data follows it in their order."""

    model_name: str
    model_version: str
    id: str | None = Field(None, description="the request's id, when it gave one")
    parameters: ResponseParameters | None = None  # type: ignore[valid-type]
    outputs: list[ResponseOutput]
