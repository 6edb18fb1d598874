"""gRPC messages <-> the REST data plane's request and outputs (service/http/oip_tensors.py, api/oip.py).

A ModelInferRequest becomes the InferenceRequest it stands for, with every input's data as binary tensor data:
`raw_input_contents[i]` as it is, typed `contents` (fp32_contents, fp64_contents) as its little-endian bytes.
So one reader (oip_tensors.read_inputs) checks and reads the tensors of both protocols, and gRPC's answers are
REST's numbers. Only what gRPC has and REST has not is checked here: the pairing of raw contents with inputs,
and the count of typed contents.
"""

from __future__ import annotations

import math
from numbers import Integral
from typing import Any

import numpy as np

from service.core.errors import InvalidInput
from service.http.api.oip import BINARY_OUTPUT
from service.http.grpc import grpc_predict_v2_pb2 as pb
from service.http.oip_tensors import INPUT_TYPES, OUTPUT_TYPES, InferenceRequest, datatype_of

# The typed contents field of each input datatype taken (INPUT_TYPES); every other datatype is refused by
# read_inputs, with REST's message.
CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents"}


def parameter_value(parameter: pb.InferParameter) -> Any:
    """An InferParameter's value as the JSON value REST would carry (None when none of its fields is set)."""
    which = parameter.WhichOneof("parameter_choice")
    return None if which is None else getattr(parameter, which)


def as_parameter(value: Any) -> pb.InferParameter:
    """A response parameter (seed, threshold, n_samples, ...) as an InferParameter; floats as double_param."""
    if isinstance(value, bool | np.bool_):
        return pb.InferParameter(bool_param=bool(value))
    if isinstance(value, Integral):
        return pb.InferParameter(int64_param=int(value))
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=str(value))


def rest_request(message: pb.ModelInferRequest) -> tuple[InferenceRequest, memoryview | None]:
    """The REST inference request a gRPC one stands for, and the binary data its inputs point into.

    Every output is asked for as binary data, so the answer's size is bounded at 8 bytes a number (what raw
    and typed FP64 contents both take), not at JSON's 25."""
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries but the request has {len(message.inputs)} inputs: "
            "give one entry per input, in the order of inputs"
        )
    inputs, chunks = [], []
    for i, tensor in enumerate(message.inputs):
        shape = list(tensor.shape)
        entry: dict[str, Any] = {"name": tensor.name, "shape": shape, "datatype": tensor.datatype}
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"{tensor.name}: give raw_input_contents or contents, not both")
            chunk: bytes | None = raw[i]
        else:
            chunk = _typed_bytes(tensor, shape)
        if chunk is not None:
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        inputs.append(entry)
    parameters = {name: parameter_value(value) for name, value in message.parameters.items()}
    body = InferenceRequest.model_validate(
        {
            "id": message.id or None,
            "parameters": parameters | {BINARY_OUTPUT: True},
            "inputs": inputs,
            "outputs": [{"name": output.name} for output in message.outputs] or None,
        }
    )
    return body, memoryview(b"".join(chunks)) if chunks else None


def _typed_bytes(tensor: pb.ModelInferRequest.InferInputTensor, shape: list[int]) -> bytes | None:
    """Typed contents as the little-endian bytes of the tensor's datatype; None for a datatype not taken,
    which read_inputs then refuses by name."""
    field = CONTENTS.get(tensor.datatype)
    if field is None:
        return None
    values = getattr(tensor.contents, field)
    count = math.prod(shape) if all(size >= 0 for size in shape) else -1  # a negative size: the shape check says so
    if count >= 0 and len(values) != count:
        raise InvalidInput(
            f"{tensor.name}: shape {shape} has {count} elements but contents.{field} has {len(values)} "
            f"(a {tensor.datatype} tensor's typed data goes in contents.{field})"
        )
    dtype = INPUT_TYPES[tensor.datatype]
    return np.fromiter(values, dtype=dtype, count=len(values)).tobytes()


def grpc_response(head: dict, outputs: list[tuple[str, np.ndarray]], raw: bool) -> pb.ModelInferResponse:
    """The answer as a ModelInferResponse: the outputs as raw_output_contents (little-endian, row-major; a BOOL
    is one byte) or as typed contents (fp64_contents, bool_contents), with head's names and parameters."""
    response = pb.ModelInferResponse(
        model_name=head["model_name"],
        model_version=head["model_version"],
        id=head.get("id") or "",
        parameters={
            name: as_parameter(value) for name, value in head.get("parameters", {}).items() if value is not None
        },
    )
    for name, array in outputs:
        datatype = datatype_of(array)
        array = np.ascontiguousarray(array, dtype=OUTPUT_TYPES[datatype])
        tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            response.raw_output_contents.append(array.tobytes())
        elif datatype == "BOOL":
            tensor.contents.bool_contents.extend(array.reshape(-1).tolist())
        else:
            tensor.contents.fp64_contents.extend(array.reshape(-1).tolist())
    return response
