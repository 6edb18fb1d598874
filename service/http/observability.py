"""Prometheus metrics, structured JSON request logs and request ids, in one pure ASGI middleware.

Pure ASGI rather than BaseHTTPMiddleware: it adds no task per request and never buffers bodies.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
import time
from functools import cached_property

import orjson
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The v2 operations a route may name for the `operation` label (Metrics.count); any other name counts as "".
OPERATIONS = frozenset({"encode", "decode", "sample", "elbo", "heatmap"})
REQUEST_LABELS = ["endpoint", "status", "model", "version", "operation"]


class Metrics:
    """The service's metrics, in a registry of its own (one per app, so tests can build many apps).

    Several worker processes (`vae serve --workers N`) share counts through prometheus_client's multiprocess
    mode: `vae serve` points PROMETHEUS_MULTIPROC_DIR at a fresh directory before any worker starts, each
    worker writes its values there, and a scrape of any worker sums them all (`exposition`).
    """

    def __init__(self, model: str = "") -> None:
        self.model_name = model  # the `model` label: the manifest's name, one per app
        self.multiproc_dir = os.environ.get(MULTIPROC_ENV) or None
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "vae_requests",
            "HTTP requests by endpoint, status, model, version and v2 operation",
            REQUEST_LABELS,
            registry=r,
        )
        self.latency = Histogram(
            "vae_request_seconds",
            "request latency",
            [label for label in REQUEST_LABELS if label != "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "vae_requests_in_flight", "requests being handled", registry=r, multiprocess_mode="livesum"
        )
        self.queue_wait = Histogram(
            "vae_batch_queue_seconds",
            "time a request waited for its batch",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "vae_batch_instances", "instances per runtime call", ["endpoint"], buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "vae_batch_requests", "requests combined per runtime call", ["endpoint"], buckets=BATCH_BUCKETS, registry=r
        )
        # A gauge of 1, not an Info, which multiprocess mode cannot share; exposed as before (vae_model_info).
        self._model_labels: tuple[str, ...] | None = None
        self.model = Gauge(
            "vae_model_info",
            "the model being served (1)",
            ["name", "version", "format_version", "runtime"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.reloads = Counter("vae_model_reloads", "model reloads by result (ok, failed)", ["result"], registry=r)
        if self.multiproc_dir is None:
            # The process's CPU, memory and file descriptors, and Python's version and garbage collector. With
            # several workers these would describe whichever worker answered the scrape, so they are left out.
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

    def count(self, endpoint: str, status: int, seconds: float, version: str, operation: str = "") -> None:
        """One finished request. `version` is the model version that answered ("" when none did); `operation`
        is a v2 operation from OPERATIONS, set by a route as `request.state.operation` ("" otherwise)."""
        # Note for /v2 (service/http/api/oip.py, not wired here): set `request.state.operation` to the
        # operation a request runs, and ObservabilityMiddleware passes it on; nothing else changes.
        operation = operation if operation in OPERATIONS else ""
        self.requests.labels(endpoint, str(status), self.model_name, version, operation).inc()
        self.latency.labels(endpoint, self.model_name, version, operation).observe(seconds)

    def set_model(self, name: str, version: str, format_version: str, runtime: str) -> None:
        """The live version: its series reads 1; the one it replaced goes (reads 0 with several workers)."""
        if self._model_labels is not None:  # 0 stays in a worker's file in multiprocess mode; else it goes
            self.model.labels(*self._model_labels).set(0)
            self.model.remove(*self._model_labels)
        self._model_labels = (name, version, format_version, runtime)
        self.model.labels(*self._model_labels).set(1)

    def exposition(self) -> bytes:
        """The text a scrape reads: this registry, or with several workers the sum of all of theirs."""
        if self.multiproc_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiproc_dir)
        PlatformCollector(registry=registry)  # python_info: the same in every worker
        return generate_latest(registry)

    def close(self) -> None:
        """At a worker's exit: its live gauges (in flight, the model) stop counting; its counts stay."""
        if self.multiproc_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), self.multiproc_dir)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name}
        line.update(getattr(record, "fields", {}) or {"message": record.getMessage()})
        if record.exc_info:  # a traceback stays inside the one JSON line
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure_logging(level: str) -> None:
    """One JSON object per line on stderr for the service's loggers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("vae")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


def uvicorn_log_config(level: str) -> dict:
    """uvicorn's `log_config`: its loggers (uvicorn, uvicorn.error, uvicorn.access) write the same JSON
    lines as the service's, so every line `vae serve` logs is one JSON object."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    logger = {"handlers": ["json"], "level": level.upper(), "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"json": handler},
        "loggers": {"uvicorn": logger, "uvicorn.error": logger, "uvicorn.access": logger},
    }


access_log = logging.getLogger("vae.access")
UNMATCHED = "unmatched"  # the one label of every request that is for none of the app's routes


def flat_routes(app) -> list:
    """Every route of `app`, each with its full `path` and `path_regex`.

    FastAPI 0.165 keeps an included router as one entry of `app.routes`; older versions copy its routes in.
    """
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:
        return list(app.routes)
    return list(iter_route_contexts(app.routes))


class RouteLabels:
    """The `endpoint` label of a request: the template of the app's route that its path is for, or UNMATCHED.

    A fixed set, so no client can add series: labels taken from raw paths grew without bound (3,000
    requests to made-up paths added 31,565 series). The path decides, not whether a route ran: the fast
    path, a 401 from the key check, a 413 and a CORS preflight never reach a route, yet a 413 on /elbo
    is still an /elbo request.
    """

    def __init__(self, app) -> None:
        self._app = app  # its routes are read at the first request, when every router is included

    @cached_property
    def _static(self) -> frozenset[str]:
        return frozenset(r.path for r in flat_routes(self._app) if "{" not in r.path)

    @cached_property
    def _templates(self) -> list:
        return [r for r in flat_routes(self._app) if "{" in r.path]

    def __call__(self, path: str) -> str:
        if path in self._static:
            return path
        return next((r.path for r in self._templates if r.path_regex.match(path)), UNMATCHED)


class ObservabilityMiddleware:
    """Request id in and out, the model version out (and its release), body size limit, metrics, and one JSON
    log line per request."""

    def __init__(self, app, metrics: Metrics, max_body_bytes: int, labels: RouteLabels) -> None:
        self.app = app
        self.labels = labels
        # Generated request ids: 16 random hex digits for this process, then a counter (32 in all); unique
        # like a uuid4 and an order of magnitude cheaper than one per request.
        self._id_prefix = os.urandom(8).hex()
        self._id_counter = itertools.count()
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or self._new_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        endpoint = scope["path"]
        started = time.perf_counter()
        status = 500
        self.metrics.in_flight.inc()

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = [(b"x-request-id", request_id.encode("latin-1"))]
                live = state.get("live_model")  # the model version the request used (service/http/api/deps.py)
                if live is not None:
                    extra.append((b"x-model-version", live.version.encode("latin-1")))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                await self._too_large(send_with_id, int(declared))
                return
            await self.app(scope, self._limited(receive), send_with_id)
        except _BodyTooLarge:
            await self._too_large(send_with_id, None)
        finally:
            live = state.get("live_model")
            if live is not None:
                live.release()
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - started
            version = live.version if live is not None else ""
            self.metrics.count(self.labels(endpoint), status, seconds, version, state.get("operation", ""))
            access_log.info(
                "request",
                extra={
                    "fields": {
                        "request_id": request_id,
                        "method": scope["method"],
                        "endpoint": endpoint,
                        "status": status,
                        "latency_ms": round(seconds * 1000, 3),
                        "batch_size": state.get("batch_size"),
                        "model_version": live.version if live is not None else None,
                    }
                },
            )

    def _new_id(self) -> str:
        return f"{self._id_prefix}{next(self._id_counter) & 0xFFFFFFFFFFFFFFFF:016x}"

    def _limited(self, receive):
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise _BodyTooLarge()
            return message

        return limited

    async def _too_large(self, send, declared: int | None) -> None:
        size = f"{declared} bytes" if declared is not None else "more"
        body = json.dumps(
            {
                "error": f"the body is {size}; the limit is {self.max_body_bytes} bytes (VAE_MAX_BODY_BYTES)",
                "code": "limit_exceeded",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass
