"""The Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`), on VAE_GRPC_PORT.

The same data plane as REST's /v2 routes (service/http/api/oip.py): the same model names, tensors, parameters,
executor and batchers, and the same numbers. A request takes the model being served once and keeps it to
the end, as an HTTP request does, so a reload is seen at the next request and never mixes two versions.
Errors are rendered by the app's own handlers (oip.protocol_error: REST's message and status) and the status
becomes the gRPC code: 400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 404 NOT_FOUND, 413 RESOURCE_EXHAUSTED,
503 UNAVAILABLE, or DEADLINE_EXCEEDED for a request that timed out.

The server runs on the app's own event loop, uvicorn's uvloop included (docs/oip-v2.md, "gRPC").
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
from fastapi import FastAPI, Request
from google.protobuf.message import DecodeError, Message
from pydantic import ValidationError

from service.core.errors import MalformedRequest, ModelNotReady, ServiceError, Timeout, Unauthorized
from service.http.api.access import NEEDS_KEY, has_key
from service.http.api.answers import INLINE_BYTES as INLINE_ANSWER_BYTES
from service.http.api.body import INLINE_BYTES as INLINE_BODY_BYTES
from service.http.api.oip import (
    EXTENSIONS,
    SERVER_NAME,
    ModelNotFound,
    Operation,
    Parsed,
    metadata,
    operation,
    parse_request,
    protocol_error,
    run_parsed,
    served,
)
from service.http.grpc import grpc_predict_v2_pb2 as pb
from service.http.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from service.http.grpc.tensors import grpc_response, rest_request
from service.http.live_model import LiveModel
from service.http.observability import Metrics
from service.http.oip_tensors import response_bound
from service.http.settings import Settings

log = logging.getLogger("vae.service")

# REST status of an error (oip.protocol_error) -> the gRPC code that means the same.
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    406: grpc.StatusCode.INVALID_ARGUMENT,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}


class ErrorRenderer:
    """An exception as (REST status, gRPC code, message), through the app's own handlers: REST's message."""

    def __init__(self, app: FastAPI) -> None:
        # A request with nothing in it but the app: all the handlers read (render_error finds them on it).
        self._request = Request({"type": "http", "app": app, "method": "POST", "path": "/", "headers": []})

    async def __call__(self, exc: Exception) -> tuple[int, grpc.StatusCode, str]:
        rendered = await protocol_error(self._request, exc)
        status, message = rendered.status_code, orjson.loads(rendered.body)["error"]
        if isinstance(exc, Timeout):
            return status, grpc.StatusCode.DEADLINE_EXCEEDED, message
        return status, CODES.get(status, grpc.StatusCode.INVALID_ARGUMENT), message


Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]
SERVICE = "inference.GRPCInferenceService"


@dataclass(frozen=True)
class Undecodable:
    """A request whose bytes are not the message its RPC takes: answered INVALID_ARGUMENT by the RPC, where
    grpc's own deserializer would have answered UNKNOWN with an exception's repr."""

    reason: str


def _decoder(message: type[Message]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except DecodeError as exc:
            return Undecodable(f"the request is not a valid {message.DESCRIPTOR.full_name} message ({exc})")

    return decode


def _answers(protected: bool) -> Callable[[Handler], Handler]:
    """An RPC that checks the API key first (when `protected` and VAE_API_KEY is set) and turns the service's
    errors into gRPC statuses; any other exception is a bug, logged, and INTERNAL. Every call is counted in
    vae_requests and vae_request_seconds as endpoint `/inference.GRPCInferenceService/<RPC>`, with the REST
    status of the same answer."""

    def wrap(handler: Handler) -> Handler:
        endpoint = f"/{SERVICE}/{handler.__name__}"

        @functools.wraps(handler)
        async def rpc(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
            started, status, version = time.perf_counter(), 200, ""
            try:
                if protected:
                    self.authorize(context)
                if isinstance(request, Undecodable):
                    raise MalformedRequest(request.reason)
                answer = await handler(self, request, context)
                version = getattr(answer, "model_version", "")
                return answer
            except (ServiceError, ValidationError) as exc:
                status, code, message = await self.render(exc)
                await context.abort(code, message)
            except Exception:
                status = 500
                log.exception("gRPC %s failed", handler.__name__)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {handler.__name__}")
            finally:
                seconds = time.perf_counter() - started
                self.metrics.count(endpoint, status, seconds, version, self.operation_of(request))

        return rpc

    return wrap


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The RPCs of grpc_predict_v2.proto this service answers; the repository RPCs stay UNIMPLEMENTED."""

    def __init__(self, app: FastAPI, api_key: bytes | None) -> None:
        self.app = app
        self.key = api_key
        self.render = ErrorRenderer(app)
        self.metrics: Metrics = app.state.metrics

    def authorize(self, context: grpc.aio.ServicerContext) -> None:
        """The metadata `authorization: Bearer <key>`, checked as REST checks the header (access.has_key)."""
        if self.key is None:
            return
        headers = [
            (str(name).encode(), value if isinstance(value, bytes) else str(value).encode())
            for name, value in (context.invocation_metadata() or ())
        ]
        if not has_key(headers, self.key):
            raise Unauthorized(NEEDS_KEY.replace("the header", "the metadata"))

    def operation_of(self, request: Any) -> str:
        """The operation of the model a call names, for the metrics' `operation` label as the /v2 routes set it:
        empty for no model or an unknown one."""
        name = getattr(request, "model_name", None) or getattr(request, "name", None)
        live = self.app.state.host.current
        if not name or live is None:
            return ""
        try:
            return operation(name, live.artifact.manifest).name
        except ModelNotFound:
            return ""

    def live(self) -> LiveModel:
        live = self.app.state.host.current
        if live is None:
            raise ModelNotReady("the model is still loading; retry when ServerReady answers true")
        return live

    # Liveness and readiness are open, as /v2/health/live and /v2/health/ready are (probes carry no key).
    @_answers(protected=False)
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_answers(protected=False)
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        """Ready once the model is loaded and warmed up, and not while draining after SIGTERM."""
        ready = self.app.state.host.current is not None and not self.app.state.draining
        return pb.ServerReadyResponse(ready=ready)

    @_answers(protected=True)
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        """False (not NOT_FOUND) for a name or version not served, as REST clients read a 404 there."""
        live = self.app.state.host.current
        if live is None:
            return pb.ModelReadyResponse(ready=False)
        try:
            served(request.name, request.version or None, live)
        except ServiceError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @_answers(protected=True)
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self.app.version, extensions=EXTENSIONS)

    @_answers(protected=True)
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        return pb.ModelMetadataResponse(**metadata(request.name, request.version or None, self.live()))

    @_answers(protected=True)
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        live = self.live().acquire()  # counted in, so that a reload retires this version only after the answer
        try:
            return await self._infer(request, live)
        finally:
            live.release()

    async def _infer(self, request: pb.ModelInferRequest, live: LiveModel) -> pb.ModelInferResponse:
        executor = live.executor
        deadline = executor.deadline()
        op = served(request.model_name, request.model_version or None, live)
        args = (request, op, live)
        large = request.ByteSize() > INLINE_BODY_BYTES
        parsed = await executor.call(_parse, *args, deadline=deadline) if large else _parse(*args)
        chosen, outputs, parameters = await run_parsed(op, live, parsed, {}, deadline)
        head = {"model_name": request.model_name, "model_version": live.version, "id": request.id}
        if parameters:
            head["parameters"] = parameters
        # Raw answers to raw requests (tritonclient sends raw, as Triton answers); typed to typed contents.
        raw = bool(request.raw_input_contents) or not request.inputs
        answer = (head, [(name, outputs[name]) for name, _ in chosen], raw)
        if response_bound([(outputs[name].shape, True, name) for name, _ in chosen]) > INLINE_ANSWER_BYTES:
            return await executor.call(grpc_response, *answer, deadline=deadline)
        return grpc_response(*answer)


def _parse(request: pb.ModelInferRequest, op: Operation, live: LiveModel) -> Parsed:
    body, binary = rest_request(request)
    return parse_request(body, binary, request.model_name, op, live)


# The RPCs answered, with their request and response messages; the repository RPCs are left out (UNIMPLEMENTED).
RPCS = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
}


def _handlers(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    """The servicer's RPCs, as the generated add_GRPCInferenceServiceServicer_to_server registers them but with
    a request decoder that hands a malformed message to the RPC (Undecodable) instead of failing in grpc."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=_decoder(request),
            response_serializer=response.SerializeToString,
        )
        for name, (request, response) in RPCS.items()
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcServer:
    """grpc.aio's server on VAE_HOST:VAE_GRPC_PORT, started and stopped by the app's lifespan."""

    def __init__(self, server: grpc.aio.Server, port: int) -> None:
        self.server = server
        self.port = port  # the port bound: VAE_GRPC_PORT, or the one picked for 0

    @classmethod
    async def start(cls, app: FastAPI, settings: Settings) -> GrpcServer:
        """Bind and start; a port that cannot be bound stops start-up with the address in the message."""
        assert settings.grpc_port is not None
        options = [
            # A message over VAE_MAX_BODY_BYTES is refused by gRPC itself (RESOURCE_EXHAUSTED) before it is
            # read whole, as REST's middleware refuses such a body with 413.
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            # Answers are bounded before any work by VAE_MAX_RESPONSE_BYTES (at 8 bytes a number plus the
            # tensors' names and shapes, an upper bound of the message), so this limit is never what stops one.
            ("grpc.max_send_message_length", -1),
        ]
        server = grpc.aio.server(options=options, maximum_concurrent_rpcs=settings.limit_concurrency)
        key = settings.api_key.get_secret_value().encode() if settings.api_key is not None else None
        server.add_generic_rpc_handlers((_handlers(InferenceServicer(app, key)),))
        address = _address(settings.host, settings.grpc_port)
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise RuntimeError(f"VAE_GRPC_PORT: cannot bind {address}: {exc}") from None
        await server.start()
        loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]  # "uvloop" under uvicorn[standard]
        log.info("serving the OIP v2 gRPC service on %s, on the %s event loop", _address(settings.host, port), loop)
        return cls(server, port)

    async def stop(self, grace_s: float) -> None:
        """Refuse new RPCs at once; the ones in flight get up to grace_s to finish."""
        await self.server.stop(grace_s)
