"""The Open Inference Protocol v2 (KServe / Triton / MLServer REST) beside the native API: request ->
tensors -> the same engine and executor calls as service/http/api/inference.py -> tensors. Nothing else.

Each operation is a model of its own: `<name>-encode`, `<name>-sample`, `<name>-decode` and `<name>-elbo`,
where <name> is the manifest's name. Tensor names are the native API's field names (`instances`, `z`; `mu`,
`elbo`, ...) and request parameters are its options (`n_samples`, `seed`, ...). docs/oip-v2.md has the
contract with examples.

Errors answer in the protocol's shape, `{"error": "..."}`: the native message and status, but 400 where the
native API says 422 (the protocol's status for a bad request).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from service.core.artifact import Manifest
from service.core.engine import ELBO_OUTPUTS, PER_INPUT_OUTPUTS, Deadline, ElboOptions
from service.core.errors import InvalidInput, ServiceError, Timeout
from service.core.inputs import check_array, check_latents
from service.http.api.answers import INLINE_BYTES, check_answer
from service.http.api.body import JSON, check_media_type, max_json_values, read_raw
from service.http.api.deps import EngineDep, LiveDep, render_error
from service.http.api.inference import state_of
from service.http.executor import Executor
from service.http.live_model import LiveModel
from service.http.oip_schemas import (
    InferenceResponse,
    ModelMetadata,
    ProtocolError,
    ServerLive,
    ServerMetadata,
    ServerReady,
)
from service.http.oip_tensors import (
    BINARY,
    HEADER_LENGTH,
    InferenceRequest,
    decompress,
    encode_response,
    read_inputs,
    response_bound,
    response_parts,
    split_body,
)
from service.http.schemas import ElboRequest, SampleRequest

SERVER_NAME = "vae-service"
EXTENSIONS = ["binary_tensor_data"]
PLATFORMS = {"onnx": "onnx_onnxv1", "torchscript": "pytorch_torchscript"}
BINARY_OUTPUT = "binary_data_output"  # request parameter of the binary extension: every output as binary data
# Request parameters any model takes, beside its own options. Triton's clients send the first five (its
# parameters extension reserves them); MLServer's send content_type and headers. The models are stateless and
# have one queue, so the sequence parameters and priority are checked and ignored; `timeout` (microseconds,
# as Triton's) can only shorten the request's deadline; content_type "np" is how the tensors are read anyway.
STANDARD_PARAMETERS = (
    "sequence_id",
    "sequence_start",
    "sequence_end",
    "priority",
    "timeout",
    "content_type",
    "headers",
)
# The version every model also answers to: the ordinal of the one version served (the hash in `versions`).
ORDINAL_VERSION = "1"
# The elbo model's outputs are /elbo's per-input fields; its per-request fields are response parameters.
ELBO_TENSORS = tuple(o.name for o in PER_INPUT_OUTPUTS)
ELBO_PARAMETERS = tuple(o.name for o in ELBO_OUTPUTS if o.kind == "per_request")
BOOL_OUTPUTS = {o.name for o in PER_INPUT_OUTPUTS if o.dtype is bool}  # every other output is FP64


class ModelNotFound(ServiceError):
    """A model name this server does not serve."""

    status_code = 404
    code = "model_not_found"


class ProtocolRoute(APIRoute):
    """Renders the errors of its routes (their dependencies included) in the protocol's shape."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handle = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await handle(request)
            except (ServiceError, RequestValidationError, ValidationError) as exc:
                return await protocol_error(request, exc)

        return handler


async def protocol_error(request: Request, exc: Exception) -> JSONResponse:
    """The app's own answer to `exc` (one message for both APIs) as `{"error": message}`; 422 becomes 400."""
    if isinstance(exc, ValidationError):
        exc = RequestValidationError(exc.errors())
    native = await render_error(request, exc)
    status = 400 if native.status_code == 422 else native.status_code
    kept = {k: v for k, v in native.headers.items() if k not in ("content-length", "content-type")}
    return JSONResponse({"error": orjson.loads(native.body)["error"]}, status_code=status, headers=kept)


# Server liveness and readiness are public (probes); model readiness is behind the key: service/http/api/access.py.
health = APIRouter(tags=["open inference protocol v2"], route_class=ProtocolRoute)
router = APIRouter(tags=["open inference protocol v2"], route_class=ProtocolRoute)  # behind the API key


# --- the operations as models -------------------------------------------------------------------------------
Run = Callable[[Executor, dict[str, np.ndarray], BaseModel | None, bool, dict, Deadline], Awaitable[tuple[dict, dict]]]


@dataclass(frozen=True)
class Operation:
    name: str  # the model name's suffix, and the `operation` label of the request metrics
    inputs: Callable[[Manifest], dict[str, list[int]]]  # input name -> shape, -1 for the batch axis
    outputs: Callable[[Manifest], dict[str, list[int]]]  # output name -> shape, in the order they are returned
    run: Run  # (executor, inputs, options, x wanted, state, deadline) -> (outputs, response parameters)
    options: type[BaseModel] | None = None  # the native request model that validates the parameters
    parameters: tuple[str, ...] = ()  # the native options taken as request parameters
    optional_inputs: tuple[str, ...] = ()


def _instances(executor: Executor, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The `instances` tensor as (B, D) raw values, checked as the native API checks a binary batch."""
    engine = executor.engine
    return check_array(inputs["instances"], engine.manifest.input_shape, engine.limits.max_instances)


async def _encode(executor, inputs, options, wants_x, state, deadline):
    engine = executor.engine
    encoded = await executor.encode(engine.to_model(_instances(executor, inputs)), state, deadline)
    return {"mu": encoded.mu, "logvar": encoded.logvar, "sigma": encoded.sigma}, {}


async def _sample(executor, inputs, options, wants_x, state, deadline):
    x_raw = _instances(executor, inputs) if "instances" in inputs else None
    decode = options.decode or wants_x
    sampled = await executor.call(
        executor.engine.sample, x_raw, options.n_samples, options.seed, decode, deadline, deadline=deadline
    )
    outputs = {"z": sampled.z} if sampled.x is None else {"z": sampled.z, "x": sampled.x}
    return outputs, {"seed": sampled.seed}


async def _decode(executor, inputs, options, wants_x, state, deadline):
    engine = executor.engine
    z = check_latents(inputs["z"], engine.manifest.latent_dim, engine.limits.max_instances)
    return {"x": await executor.decode(z, state, deadline)}, {}


async def _elbo(executor, inputs, options, wants_x, state, deadline):
    elbo_options = ElboOptions(
        n_samples=options.n_samples,
        seed=options.seed,
        iw_samples=options.iw_samples,
        threshold=options.threshold,
        fpr=options.fpr,
    )
    prepared = executor.engine.prepare_elbo(_instances(executor, inputs), elbo_options)
    scored = await executor.elbo(prepared, state, deadline)
    outputs = {name: scored.value(name) for name in ELBO_TENSORS}
    parameters = {name: scored.value(name) for name in ELBO_PARAMETERS}
    return outputs, parameters


OPERATIONS = {
    op.name: op
    for op in (
        Operation(
            name="encode",
            inputs=lambda m: {"instances": [-1, *m.input_shape]},
            outputs=lambda m: {name: [-1, m.latent_dim] for name in ("mu", "logvar", "sigma")},
            run=_encode,
        ),
        Operation(
            name="sample",
            inputs=lambda m: {"instances": [-1, *m.input_shape]},
            outputs=lambda m: {"z": [-1, -1, m.latent_dim], "x": [-1, -1, *m.input_shape]},
            run=_sample,
            options=SampleRequest,
            parameters=("n_samples", "seed", "decode"),
            optional_inputs=("instances",),
        ),
        Operation(
            name="decode",
            inputs=lambda m: {"z": [-1, m.latent_dim]},
            outputs=lambda m: {"x": [-1, *m.input_shape]},
            run=_decode,
        ),
        Operation(
            name="elbo",
            inputs=lambda m: {"instances": [-1, *m.input_shape]},
            outputs=lambda m: {name: [-1] for name in ELBO_TENSORS},
            run=_elbo,
            options=ElboRequest,
            parameters=("n_samples", "iw_samples", "seed", "threshold", "fpr"),
        ),
    )
}


def model_names(manifest: Manifest) -> list[str]:
    return [f"{manifest.name}-{op}" for op in OPERATIONS]


def operation(model_name: str, manifest: Manifest) -> Operation:
    """The operation a model name stands for; ModelNotFound for any other name."""
    prefix, _, op = model_name.rpartition("-")
    if prefix != manifest.name or op not in OPERATIONS:
        raise ModelNotFound(f"unknown model '{model_name}'; this server serves {', '.join(model_names(manifest))}")
    return OPERATIONS[op]


class ClientDeadline(Deadline):
    """A deadline the request set itself (parameters.timeout), before VAE_REQUEST_TIMEOUT_S's."""

    def error(self) -> Timeout:
        return Timeout(f"the request did not finish within its parameters.timeout of {self.timeout_s * 1e6:g} us")


def _standard(parameters: dict) -> float | None:
    """Checks the standard request parameters; the request's own timeout in seconds, if it gives one."""

    def expect(name: str, ok: bool, what: str) -> None:
        if name in parameters and not ok:
            raise InvalidInput(f"parameters.{name}: expected {what}, got {parameters[name]!r}")

    def is_int(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    sequence_id = parameters.get("sequence_id")
    expect("sequence_id", is_int(sequence_id) or isinstance(sequence_id, str), "an integer or a string")
    for flag in ("sequence_start", "sequence_end"):
        expect(flag, isinstance(parameters.get(flag), bool), "true or false")
    priority = parameters.get("priority")
    expect("priority", is_int(priority) and priority >= 0, "a whole number, 0 or more")
    timeout = parameters.get("timeout")
    expect("timeout", is_int(timeout) and timeout >= 0, "a whole number of microseconds, 0 or more")
    expect("content_type", parameters.get("content_type") == "np", "'np' (the tensors are read as numpy arrays)")
    expect("headers", isinstance(parameters.get("headers"), dict), "an object")
    return timeout / 1e6 if timeout else None  # 0: no timeout of its own


def _deadline(deadline: Deadline, timeout_s: float | None) -> Deadline:
    """The request's deadline: VAE_REQUEST_TIMEOUT_S's, or sooner when the request asks."""
    if timeout_s is None or timeout_s >= deadline.remaining():
        return deadline
    return ClientDeadline(time.monotonic() + timeout_s, timeout_s)


def _options(model_name: str, op: Operation, parameters: dict) -> tuple[BaseModel | None, bool]:
    """The request parameters as the native options (validated by the native model), and binary_data_output."""
    parameters = {k: v for k, v in parameters.items() if k not in STANDARD_PARAMETERS}
    taken = (*op.parameters, BINARY_OUTPUT)
    unknown = sorted(set(parameters) - set(taken))
    if unknown:
        raise InvalidInput(
            f"parameters: {model_name} takes no parameter '{unknown[0]}'; it takes {', '.join(sorted(taken))} "
            f"and the standard {', '.join(STANDARD_PARAMETERS)}"
        )
    binary = parameters.get(BINARY_OUTPUT, False)
    if not isinstance(binary, bool):
        raise InvalidInput(f"parameters.{BINARY_OUTPUT}: expected true or false, got {binary!r}")
    if op.options is None:
        return None, binary
    given = {k: v for k, v in parameters.items() if k in op.parameters}
    return op.options.model_validate(given | {"instances": None if op.optional_inputs else []}), binary


def _check_input_names(model_name: str, op: Operation, body: InferenceRequest, manifest: Manifest) -> None:
    expected = list(op.inputs(manifest))
    names = [tensor.name for tensor in body.inputs]
    for name in names:
        if name not in expected:
            raise InvalidInput(f"inputs: {model_name} has no input '{name}'; it takes {', '.join(expected)}")
        if names.count(name) > 1:
            raise InvalidInput(f"inputs: '{name}' is given {names.count(name)} times")
    missing = [name for name in expected if name not in names and name not in op.optional_inputs]
    if missing:
        raise InvalidInput(f"inputs: missing input '{missing[0]}' of {model_name}")


def _wanted(
    model_name: str, op: Operation, body: InferenceRequest, manifest: Manifest, binary_default: bool
) -> list[tuple[str, bool]] | None:
    """The requested outputs with whether each goes binary, in the request's order; None for all of them
    (no `outputs`, or an empty list, as gRPC cannot tell the two apart)."""
    if not body.outputs:
        return None
    produced = list(op.outputs(manifest))
    wanted = []
    for i, requested in enumerate(body.outputs):
        if requested.name not in produced:
            raise InvalidInput(
                f"outputs[{i}]: {model_name} has no output '{requested.name}'; it has {', '.join(produced)}"
            )
        binary = requested.parameters.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise InvalidInput(f"outputs[{i}].parameters.binary_data: expected true or false, got {binary!r}")
        wanted.append((requested.name, binary))
    return wanted


# --- what the OpenAPI document says (service/http/oip_schemas.py; tests/service/test_openapi.py checks it) -----
# The standard request parameters as _standard accepts them.
STANDARD_PARAMETER_SCHEMAS: dict[str, dict] = {
    "sequence_id": {"type": ["integer", "string"]},
    "sequence_start": {"type": "boolean"},
    "sequence_end": {"type": "boolean"},
    "priority": {"type": "integer", "minimum": 0},
    "timeout": {"type": "integer", "minimum": 0, "description": "microseconds; it can only shorten the deadline"},
    "content_type": {"const": "np"},
    "headers": {"type": "object"},
}


def _parameters_schema() -> dict:
    """Every request parameter some model takes, typed as its native option (each model takes its own: any
    other is a 400), the binary extension's, and the standard ones."""
    properties: dict[str, dict] = {BINARY_OUTPUT: {"type": "boolean", "description": "every output as binary data"}}
    for op in OPERATIONS.values():
        if op.options is not None:
            native = op.options.model_json_schema()["properties"]
            properties |= {name: {k: v for k, v in native[name].items() if k != "title"} for name in op.parameters}
    properties |= STANDARD_PARAMETER_SCHEMAS
    return {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        "description": "; ".join(f"{op.name}: {', '.join(op.parameters) or 'none'}" for op in OPERATIONS.values())
        + f" (and {BINARY_OUTPUT} and the standard parameters)",
    }


def _inlined(schema: dict) -> dict:
    """A pydantic JSON schema with its $defs put in place of their $refs: the request body is documented
    inline (it is parsed by the route, so FastAPI lists no component for it)."""
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[1]])
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return walk(schema)


def _request_schema() -> dict:
    schema = _inlined(InferenceRequest.model_json_schema())
    schema["properties"]["parameters"] = _parameters_schema()
    return schema


INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _request_schema()},
            BINARY: {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": (
                        "the JSON request (Inference-Header-Content-Length bytes), then the binary input data"
                    ),
                }
            },
        },
    }
}
ERROR = {"model": ProtocolError}
# Every client error of a v2 route is a ProtocolError; "4XX" says so (and keeps FastAPI's 422, which a v2
# route never sends, out of the document).
MODEL_ERRORS: dict[int | str, dict] = {
    "4XX": ERROR | {"description": "a client error"},
    401: ERROR | {"description": "no or a wrong API key"},
    404: ERROR | {"description": "a model name or version this server does not serve"},
    503: ERROR | {"description": "the model is not loaded yet"},
}
INFER_ERRORS: dict[int | str, dict] = MODEL_ERRORS | {
    400: ERROR | {"description": "a malformed request, or a tensor or parameter the model does not take"},
    413: ERROR | {"description": "the body, the batch or the answer is over a limit (VAE_MAX_*)"},
    415: ERROR | {"description": "a Content-Type other than application/json or application/octet-stream"},
    503: ERROR | {"description": "the model is not loaded yet, or the request did not finish in time"},
}
INFER_ANSWER: dict[int | str, dict] = {
    200: {
        "model": InferenceResponse,
        "description": "the outputs as JSON; or, when the request asks for binary data, application/octet-stream: "
        "the InferenceResponse JSON (Inference-Header-Content-Length bytes), then the outputs' binary data",
        # JSON first: generated clients read the first media type of an answer.
        "content": {"application/json": {}, BINARY: {"schema": {"type": "string", "format": "binary"}}},
    }
}


# --- routes -------------------------------------------------------------------------------------------------
@health.get("/v2/health/live", response_model=ServerLive)
async def server_live() -> dict:
    """200 and {"live": true} while the process is alive (KServe's client reads the body)."""
    return {"live": True}


@health.get(
    "/v2/health/ready",
    response_class=Response,
    responses={
        200: {"model": ServerReady, "description": "ready"},
        503: ERROR | {"description": "loading or draining"},
    },
)
async def server_ready(request: Request, engine: EngineDep) -> Response:
    """200 and {"ready": true} once the model is loaded and warmed up and the server is not draining, else 503."""
    if request.app.state.draining:
        return JSONResponse({"error": "the server is shutting down"}, status_code=503)
    return JSONResponse({"ready": True})


def served(model_name: str, version: str | None, live: LiveModel) -> Operation:
    """The operation of a model name, at a version (when the path names one) that must be the one served.
    Knows nothing of the request: gRPC (service/http/grpc) asks it too."""
    op = operation(model_name, live.artifact.manifest)
    if version is not None and version not in (live.version, ORDINAL_VERSION):
        raise ModelNotFound(
            f"{model_name} has no version '{version}'; this server serves version {live.version} "
            f"(also called {ORDINAL_VERSION})"
        )
    return op


def _served(request: Request, model_name: str, version: str | None, live: LiveModel) -> Operation:
    """served(), and the operation becomes the request's `operation` metric label (service/http/observability.py),
    set before the version is checked, so /v2 traffic counts per operation: a fixed set, never a name from the
    request."""
    request.state.operation = operation(model_name, live.artifact.manifest).name
    return served(model_name, version, live)


READY_ANSWER: dict[int | str, dict] = {200: {"description": "ready: an empty body"}}


@health.get("/v2/models/{model_name}/ready", response_class=Response, responses=READY_ANSWER | MODEL_ERRORS)
async def model_ready(model_name: str, request: Request, live: LiveDep) -> Response:
    """200 when the named model is loaded and warmed up; 404 for a name this server does not serve."""
    _served(request, model_name, None, live)
    return Response()


@health.get(
    "/v2/models/{model_name}/versions/{model_version}/ready",
    response_class=Response,
    responses=READY_ANSWER | MODEL_ERRORS,
)
async def model_version_ready(model_name: str, model_version: str, request: Request, live: LiveDep) -> Response:
    """200 when the named model is served at this version (X-Model-Version); 404 otherwise."""
    _served(request, model_name, model_version, live)
    return Response()


@router.get("/v2", response_model=ServerMetadata, responses={401: MODEL_ERRORS[401]})
async def server_metadata(request: Request) -> dict:
    """The server's name, version and protocol extensions."""
    return {"name": SERVER_NAME, "version": request.app.version, "extensions": EXTENSIONS}


@router.get("/v2/models/{model_name}", response_model=ModelMetadata, responses=MODEL_ERRORS)
async def model_metadata(model_name: str, request: Request, live: LiveDep) -> dict:
    """The model's platform, its version, and its input and output tensors, with -1 for the batch (and draws) axes."""
    return _metadata(request, model_name, None, live)


@router.get("/v2/models/{model_name}/versions/{model_version}", response_model=ModelMetadata, responses=MODEL_ERRORS)
async def model_version_metadata(model_name: str, model_version: str, request: Request, live: LiveDep) -> dict:
    """The model's metadata at this version, the one being served (404 for any other)."""
    return _metadata(request, model_name, model_version, live)


def _metadata(request: Request, model_name: str, version: str | None, live: LiveModel) -> dict:
    _served(request, model_name, version, live)  # the request's operation label
    return metadata(model_name, version, live)


def metadata(model_name: str, version: str | None, live: LiveModel) -> dict:
    """The model metadata of REST and gRPC."""
    op = served(model_name, version, live)
    manifest = live.artifact.manifest
    return {
        "name": model_name,
        "versions": [live.version],
        "platform": PLATFORMS[live.engine.runtime.name],
        "inputs": [{"name": n, "datatype": "FP64", "shape": s} for n, s in op.inputs(manifest).items()],
        "outputs": [
            {"name": n, "datatype": "BOOL" if n in BOOL_OUTPUTS else "FP64", "shape": s}
            for n, s in op.outputs(manifest).items()
        ],
    }


@router.post(
    "/v2/models/{model_name}/infer",
    response_class=Response,
    openapi_extra=INFER_BODY,
    responses=INFER_ANSWER | INFER_ERRORS,
)
async def infer(model_name: str, request: Request, live: LiveDep) -> Response:
    """Run the model on the request's tensors; outputs as JSON, or as binary data when the request asks."""
    return await _infer(model_name, None, request, live)


@router.post(
    "/v2/models/{model_name}/versions/{model_version}/infer",
    response_class=Response,
    openapi_extra=INFER_BODY,
    responses=INFER_ANSWER | INFER_ERRORS,
)
async def infer_version(model_name: str, model_version: str, request: Request, live: LiveDep) -> Response:
    """Infer at this version, the one being served (404 for any other)."""
    return await _infer(model_name, model_version, request, live)


@dataclass(frozen=True)
class Parsed:
    body: InferenceRequest
    options: BaseModel | None
    binary_default: bool
    wanted: list[tuple[str, bool]] | None
    inputs: dict[str, np.ndarray]
    timeout_s: float | None  # parameters.timeout, in seconds


def _parse(
    raw: bytes | memoryview, header_length: str | None, model_name: str, op: Operation, live: LiveModel
) -> Parsed:
    """Everything about a request's body that can fail before the model runs (in the worker pool when large)."""
    header, binary = split_body(raw, header_length, max_json_values(live.engine))
    return parse_request(InferenceRequest.model_validate(header), binary, model_name, op, live)


def parse_request(
    body: InferenceRequest, binary: memoryview | None, model_name: str, op: Operation, live: LiveModel
) -> Parsed:
    """A request's tensors and parameters, checked for this model: REST's and gRPC's (service/http/grpc)."""
    manifest = live.artifact.manifest
    timeout_s = _standard(body.parameters)
    options, binary_default = _options(model_name, op, body.parameters)
    _check_input_names(model_name, op, body, manifest)
    wanted = _wanted(model_name, op, body, manifest, binary_default)
    return Parsed(body, options, binary_default, wanted, read_inputs(body.inputs, binary), timeout_s)


def _chosen(op: Operation, manifest: Manifest, parsed: Parsed, decodes: bool) -> list[tuple[str, bool]]:
    """The outputs the answer holds, each with whether it goes binary."""
    produced = [
        name for name in op.outputs(manifest) if not (op is OPERATIONS["sample"] and name == "x" and not decodes)
    ]
    return parsed.wanted or [(name, parsed.binary_default) for name in produced]


def _check_answer_size(op: Operation, live: LiveModel, parsed: Parsed, chosen: list[tuple[str, bool]]) -> None:
    """413 before the model runs when the answer may exceed VAE_MAX_RESPONSE_BYTES: each output's shape has
    the batch for its first -1 and the draws (n_samples) for its second."""
    engine, manifest = live.engine, live.artifact.manifest
    given = next(iter(parsed.inputs.values()), None)
    batch = len(given) if given is not None and given.ndim > 0 else 1
    # Only sample's outputs have a draws axis; elbo's n_samples may be None (the model's L), and no shape uses it.
    draws = getattr(parsed.options, "n_samples", None) or 1
    if op is OPERATIONS["sample"]:
        engine.check_draws(batch, draws)
    shapes = op.outputs(manifest)
    tensors = []
    for name, as_binary in chosen:
        fill = iter([batch, draws])
        tensors.append(([next(fill) if size == -1 else size for size in shapes[name]], as_binary, name))
    size = response_bound(tensors)
    check_answer(engine, size, lambda: ", ".join(f"{name} {shape}" for shape, _, name in tensors))


async def _infer(model_name: str, version: str | None, request: Request, live: LiveModel) -> Response:
    executor = live.executor
    deadline = executor.deadline()
    op = _served(request, model_name, version, live)
    # A body without a Content-Type is taken: tritonclient's HTTP client sends none, on JSON and binary bodies
    # alike (tests/service/test_oip.py records it). A declared one must be JSON or binary, so text/plain and
    # forms, which a web page may POST cross-site without a CORS preflight, get 415.
    if "content-type" in request.headers:
        check_media_type(request, [JSON, BINARY])
    raw = await read_raw(request)
    if encoding := request.headers.get("content-encoding"):  # tritonclient's request_compression_algorithm
        limit = request.app.state.settings.max_body_bytes
        raw = await executor.call(decompress, raw, encoding, limit, deadline=deadline)
    parse = (raw, request.headers.get(HEADER_LENGTH), model_name, op, live)
    parsed = _parse(*parse) if len(raw) <= INLINE_BYTES else await executor.call(_parse, *parse, deadline=deadline)
    chosen, outputs, parameters = await run_parsed(op, live, parsed, state_of(request), deadline)
    body = parsed.body
    head = {"model_name": model_name, "model_version": live.version, **({"id": body.id} if body.id is not None else {})}
    if parameters:
        head["parameters"] = parameters
    answer = (head, [(name, outputs[name], as_binary) for name, as_binary in chosen])
    if response_bound([(outputs[n].shape, b, n) for n, b in chosen]) > INLINE_BYTES:
        return _streamed(*response_parts(*answer))
    content, header_length = encode_response(*answer)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)})


async def run_parsed(
    op: Operation, live: LiveModel, parsed: Parsed, state: dict, deadline: Deadline
) -> tuple[list[tuple[str, bool]], dict[str, np.ndarray], dict]:
    """The model run on a parsed request (REST and gRPC): the outputs chosen (name, as binary), their arrays,
    and the response parameters. The answer's size is checked against its limit before the model runs."""
    options, deadline = parsed.options, _deadline(deadline, parsed.timeout_s)
    wants_x = parsed.wanted is not None and any(name == "x" for name, _ in parsed.wanted)
    chosen = _chosen(op, live.artifact.manifest, parsed, wants_x or bool(getattr(options, "decode", False)))
    _check_answer_size(op, live, parsed, chosen)
    outputs, parameters = await op.run(live.executor, parsed.inputs, options, wants_x, state, deadline)
    return chosen, outputs, parameters


def _streamed(parts, length: int | None, header_length: int | None) -> StreamingResponse:
    """A large answer sent as it is written (in the worker pool), with its length when it is known."""
    if header_length is None:
        return StreamingResponse(parts, media_type="application/json")
    headers = {HEADER_LENGTH: str(header_length), "content-length": str(length)}
    return StreamingResponse(parts, media_type=BINARY, headers=headers)
