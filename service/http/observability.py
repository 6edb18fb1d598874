"""Prometheus metrics, structured JSON request logs and request ids: the Observer that records every request,
and the pure ASGI middleware that applies it to every route (the fast path, service/http/api/fast_path.py,
applies the same Observer itself).

Pure ASGI rather than BaseHTTPMiddleware: it adds no task per request and never buffers bodies.

Recording a request costs the event loop two list appends. The metrics are updated at most once per
METRICS_HELD_S for every request (and every micro-batch) recorded since, and at every scrape, so a scrape
always reads every request that has finished (with several workers, they are updated at the end of each turn
of the event loop). The access log lines are made and written by a thread of their own. Updating a
Prometheus counter and histogram per request and logging through `logging` on the event loop took about a
fifth of its time on the digits model at c=64, and updating the metrics once per turn still cost ~15 µs a
request at c=1 (docs/benchmark-serving.md, "What each change gained").
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import queue
import sys
import threading
import time
from bisect import bisect_left
from collections import Counter as Tally
from collections import defaultdict, deque
from functools import cached_property
from typing import Any

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
# How long a finished request or a batch may wait before it reaches the metrics; a scrape flushes first, so a
# scrape never misses one. With several workers a scrape may be answered by another worker, which reads only
# what this one has flushed, so there the metrics are flushed at the end of each turn of the event loop.
METRICS_HELD_S = 0.05


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

        # Each labelled series once: labels() checks and joins its values on every call, a few µs a time, five
        # times a request at c=1. None of these series is ever removed, so a series found stays right.
        self._series: dict[tuple, Any] = {}
        self._finished: list[tuple[str, int, str, str, float]] = []  # requests not yet in the metrics
        self._in_flight = 0  # requests started minus finished since the last flush
        # Batches not yet in the metrics, appended by the batchers' threads: a deque, whose append and popleft
        # are atomic, so the flush on the event loop takes each exactly once.
        self._batches: deque[tuple[str, int, int, list[float]]] = deque()
        self._flush_due = False
        self._held_s = METRICS_HELD_S if self.multiproc_dir is None else 0.0

    def start(self) -> None:
        """One more request in flight (reaches the gauge at the next flush)."""
        self._in_flight += 1
        self._flush_soon()

    def count(self, endpoint: str, status: int, seconds: float, version: str, operation: str = "") -> None:
        """One finished request. `version` is the model version that answered ("" when none did); `operation`
        is a v2 operation from OPERATIONS, set by a route as `request.state.operation` ("" otherwise).

        Held for METRICS_HELD_S (to the end of the loop's turn with several workers), or until the next scrape,
        whichever is first."""
        # Note for /v2 (service/http/api/oip.py, not wired here): set `request.state.operation` to the
        # operation a request runs, and ObservabilityMiddleware passes it on; nothing else changes.
        self._finished.append((endpoint, status, version, operation, seconds))
        self._flush_soon()

    def finish(self, endpoint: str, status: int, seconds: float, version: str, operation: str = "") -> None:
        """A request that start() counted in has finished."""
        self._in_flight -= 1
        self.count(endpoint, status, seconds, version, operation)

    def _flush_soon(self) -> None:
        if self._flush_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a script or a test): at once
            self.flush()
            return
        self._flush_due = True
        if self._held_s:
            loop.call_later(self._held_s, self.flush)
        else:
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Every request and batch recorded since the last flush, into the metrics: one increment per series."""
        self._flush_due = False
        batches = self._batches
        by_endpoint: defaultdict[str, tuple[list[float], list[float], list[float]]] = defaultdict(lambda: ([], [], []))
        while batches:  # a bulk observation per series, not one per batch: at c=1 every request is a batch
            endpoint, requests, instances, waits = batches.popleft()
            sizes = by_endpoint[endpoint]
            sizes[0].append(requests)
            sizes[1].append(instances)
            sizes[2].extend(waits)
        for endpoint, (requests_of, instances_of, waits) in by_endpoint.items():
            observe_all(self._series_of(self.batch_requests, endpoint), requests_of)
            observe_all(self._series_of(self.batch_size, endpoint), instances_of)
            observe_all(self._series_of(self.queue_wait, endpoint), waits)
        finished, self._finished = self._finished, []
        in_flight, self._in_flight = self._in_flight, 0
        if in_flight:
            self.in_flight.inc(in_flight)
        counts: Tally[tuple[str, str, str, str]] = Tally()
        latencies: defaultdict[tuple[str, str, str], list[float]] = defaultdict(list)
        for endpoint, status, version, operation, seconds in finished:
            operation = operation if operation in OPERATIONS else ""
            counts[endpoint, str(status), version, operation] += 1
            latencies[endpoint, version, operation].append(seconds)
        for (endpoint, status, version, operation), n in counts.items():
            self._series_of(self.requests, endpoint, status, self.model_name, version, operation).inc(n)
        for (endpoint, version, operation), values in latencies.items():
            observe_all(self._series_of(self.latency, endpoint, self.model_name, version, operation), values)

    def observe_batch(self, endpoint: str, requests: int, instances: int, waits: list[float]) -> None:
        """One runtime call of the micro-batcher (called from its thread, or inline on the event loop): its size
        and its requests' waits, at the next flush. Its requests' own finish schedules that flush."""
        self._batches.append((endpoint, requests, instances, waits))

    def _series_of(self, metric, *labels: str):
        """metric.labels(*labels), remembered (from either thread: at worst two look it up at once, and both get
        the same series, since labels() takes the metric's lock)."""
        key = (metric, *labels)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = metric.labels(*labels)
        return series

    def set_model(self, name: str, version: str, format_version: str, runtime: str) -> None:
        """The live version: its series reads 1; the one it replaced goes (reads 0 with several workers)."""
        if self._model_labels is not None:  # 0 stays in a worker's file in multiprocess mode; else it goes
            self.model.labels(*self._model_labels).set(0)
            self.model.remove(*self._model_labels)
        self._model_labels = (name, version, format_version, runtime)
        self.model.labels(*self._model_labels).set(1)

    def exposition(self) -> bytes:
        """The text a scrape reads: this registry, or with several workers the sum of all of theirs."""
        self.flush()
        if self.multiproc_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiproc_dir)
        PlatformCollector(registry=registry)  # python_info: the same in every worker
        return generate_latest(registry)

    def close(self) -> None:
        """At a worker's exit: its live gauges (in flight, the model) stop counting; its counts stay."""
        self.flush()
        if self.multiproc_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), self.multiproc_dir)


def observe_all(histogram, values: list[float]) -> None:
    """histogram.observe(v) for every v, with one increment of its sum and of each bucket that gets any.

    prometheus_client has no bulk observe; this writes the same series through the child's own values
    (`_sum`, `_buckets`: non-cumulative, as Histogram.observe fills them). tests/service/test_observability.py
    holds it to Histogram.observe's exposition, so a change in prometheus_client shows there."""
    if not values:
        return
    bounds = histogram._upper_bounds
    hits = Tally(bisect_left(bounds, v) for v in values)  # the first bucket with v <= bound, as observe picks
    histogram._sum.inc(sum(values))
    for bucket, n in hits.items():
        histogram._buckets[bucket].inc(n)


def json_line(created: float, level: str, logger: str, fields: dict) -> str:
    """One log line as JSON: the time, level and logger, then the fields."""
    line = {"ts": round(created, 3), "level": level, "logger": logger}
    line.update(fields)
    return orjson.dumps(line, default=str).decode()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {}) or {"message": record.getMessage()}
        if record.exc_info:  # a traceback stays inside the one JSON line
            fields = {**fields, "exception": self.formatException(record.exc_info)}
        return json_line(record.created, record.levelname.lower(), record.name, fields)


class JsonLinesHandler(logging.StreamHandler):
    """The service's handler: JSON lines (JsonFormatter) on a stream. The access log's writer thread may also
    hand it lines it made itself (write_lines): a hand-over's lines in one write."""

    def __init__(self, stream=None) -> None:
        super().__init__(stream)
        self.setFormatter(JsonFormatter())

    def write_lines(self, text: str) -> None:
        with self.lock:  # type: ignore[union-attr]  # StreamHandler always has its lock
            try:
                self.stream.write(text)
                self.flush()
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": f"{text.count(self.terminator)} log lines"}))


def json_lines_handlers(logger: logging.Logger) -> list[JsonLinesHandler] | None:
    """The handlers an INFO record of `logger` reaches (as Logger.handle and callHandlers pass it on), when each
    is a JsonLinesHandler that writes it as JsonFormatter formats it and nothing on the way filters it: then
    json_line makes exactly the line a LogRecord would get, and the access log skips the records. None when
    anything else could see or change a record (another handler or formatter, a filter, no handler at all)."""
    if logger.disabled or logger.filters or not logger.isEnabledFor(logging.INFO):
        return None
    found: list[JsonLinesHandler] = []
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            plain = type(handler) is JsonLinesHandler and type(handler.formatter) is JsonFormatter
            if not plain or handler.level > logging.INFO or handler.filters:
                return None
            found.append(handler)  # type: ignore[arg-type]  # a JsonLinesHandler, checked just above
        current = current.parent if current.propagate else None
    return found or None


def configure_logging(level: str) -> None:
    """One JSON object per line on stderr for the service's loggers."""
    handler = JsonLinesHandler(sys.stderr)
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


class AccessLogWriter:
    """The access log's records, made and handled (formatted, written) by a thread of its own.

    The event loop appends each request's fields to a list; HAND_OVER_S after the first of them, the list
    goes to the thread (handing over every line woke the thread once per request at c=1), which makes one
    `vae.access` LogRecord per request, with the time the request finished, and hands it to the logger's
    handlers as `access_log.info` would. As the service configures logging (only JsonLinesHandlers, no
    filters: json_lines_handlers), it makes the same lines without the records instead, and each handler
    writes the hand-over's lines at once: 1.1 µs of the thread's CPU per line instead of 5.9 (10,000 lines to
    a file). drain() waits until every record handed over so far has been handled: at shutdown, and in tests.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[float, dict]] = []
        self._queue: queue.SimpleQueue[list[tuple[float, dict]] | threading.Event] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # starting the thread, from whichever thread logs first

    def add(self, fields: dict) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        if not self._pending:
            try:
                asyncio.get_running_loop().call_later(HAND_OVER_S, self._hand_over)
            except RuntimeError:  # no event loop: hand it over at once
                self._pending.append((time.time(), fields))
                self._hand_over()
                return
        self._pending.append((time.time(), fields))

    def _hand_over(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self._started().put(pending)

    def drain(self, timeout_s: float = 5.0) -> None:
        """Block until every record handed over before this call has been handled."""
        self._hand_over()
        done = threading.Event()
        self._started().put(done)
        done.wait(timeout_s)

    def _started(self) -> queue.SimpleQueue:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._write, name="vae-access-log", daemon=True)
                self._thread.start()
        return self._queue

    def _write(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            handlers = json_lines_handlers(access_log)
            if handlers is not None:  # as configured by the service: the lines made directly, one write each
                text = "".join(json_line(t, "info", access_log.name, fields) + "\n" for t, fields in item)
                for handler in handlers:
                    handler.write_lines(text)
                continue
            for finished_at, fields in item:
                record = access_log.makeRecord(
                    access_log.name, logging.INFO, __file__, 0, "request", (), None, extra={"fields": fields}
                )
                record.created = finished_at
                record.msecs = (finished_at - int(finished_at)) * 1000
                try:
                    access_log.handle(record)
                except Exception:  # a broken handler must not end the thread that writes every line
                    logging.getLogger("vae.service").exception("the access log could not write a line")


HAND_OVER_S = 0.05  # how long a line may wait on the event loop before the writer thread gets it
ACCESS_LOG = AccessLogWriter()  # one per process, like the `vae.access` logger it writes to
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


class Observer:
    """What is recorded of every request, by the middleware below and by the fast path alike: its request id
    (taken from X-Request-ID, or made), the metrics and one access log line."""

    def __init__(self, metrics: Metrics, labels: RouteLabels) -> None:
        self.metrics = metrics
        self.labels = labels
        # Generated request ids: 16 random hex digits for this process, then a counter (32 in all); unique
        # like a uuid4 and an order of magnitude cheaper than one per request.
        self._id_prefix = os.urandom(8).hex()
        self._id_counter = itertools.count()

    def request_id(self, given: bytes | None) -> str:
        """The client's X-Request-ID (at most 128 characters), or a new one."""
        if given:
            return given.decode("latin-1")[:128]
        return f"{self._id_prefix}{next(self._id_counter) & 0xFFFFFFFFFFFFFFFF:016x}"

    def start(self) -> float:
        """A request begins: counted in flight; the time it started."""
        self.metrics.start()
        return time.perf_counter()

    def finish(
        self,
        started: float,
        request_id: str,
        method: str,
        path: str,
        status: int,
        version: str | None,
        batch_size: int | None,
        operation: str = "",
    ) -> None:
        seconds = time.perf_counter() - started
        self.metrics.finish(self.labels(path), status, seconds, version or "", operation)
        ACCESS_LOG.add(
            {
                "request_id": request_id,
                "method": method,
                "endpoint": path,
                "status": status,
                "latency_ms": round(seconds * 1000, 3),
                "batch_size": batch_size,
                "model_version": version,
            }
        )


def with_ids(headers: list, request_id: str, live) -> list:
    """A response's headers with X-Request-ID and, when a model version answered, X-Model-Version."""
    extra = [(b"x-request-id", request_id.encode("latin-1"))]
    if live is not None:  # the model version the request used (service/http/api/deps.py)
        extra.append((b"x-model-version", live.version.encode("latin-1")))
    return [*headers, *extra]


def sending_ids(send, state: dict):
    """`send` that notes an answer's status in state["status"] and adds the request's ids to its headers: the
    request id and, once one answered, the model version (state["request_id"], state["live_model"])."""

    async def send_with_ids(message) -> None:
        if message["type"] == "http.response.start":
            state["status"] = message["status"]
            message["headers"] = with_ids(message.get("headers", []), state["request_id"], state.get("live_model"))
        await send(message)

    return send_with_ids


class ObservabilityMiddleware:
    """Request id in and out, the model version out (and its release), body size limit, metrics, and one JSON
    log line per request."""

    def __init__(self, app, observer: Observer, max_body_bytes: int) -> None:
        self.app = app
        self.observer = observer
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        state = scope.setdefault("state", {})
        request_id = state.get("request_id") or self.observer.request_id(headers.get(b"x-request-id"))
        state["request_id"] = request_id
        state["status"] = 500  # until an answer starts
        started = self.observer.start()
        send_with_id = sending_ids(send, state)
        try:
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                await too_large(send_with_id, self.max_body_bytes, int(declared))
                return
            await self.app(scope, self._limited(receive), send_with_id)
        except _BodyTooLarge:
            await too_large(send_with_id, self.max_body_bytes, None)
        finally:
            live = state.get("live_model")
            if live is not None:
                live.release()
            version = live.version if live is not None else None
            self.observer.finish(
                started,
                request_id,
                scope["method"],
                scope["path"],
                state["status"],
                version,
                state.get("batch_size"),
                state.get("operation", ""),
            )

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


async def too_large(send, max_body_bytes: int, declared: int | None) -> None:
    size = f"{declared} bytes" if declared is not None else "more"
    body = json.dumps(
        {
            "error": f"the body is {size}; the limit is {max_body_bytes} bytes (VAE_MAX_BODY_BYTES)",
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
