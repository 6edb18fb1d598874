"""A yardstick for benchmarks/serving.py: the lean one-worker server issue 15 describes, answering POST /elbo.

Issue 15 measured "a throwaway lean server" to show how much room Python has: a bare ASGI callable under
uvicorn, orjson parsing, numpy validation, a batcher feeding one worker thread, ONNX Runtime, the ELBO, L_K, the
decision and the p-value, an X-Request-ID, and Prometheus metrics and a JSON access log updated once per batch.
This is that server, so that its rate can be measured beside TorchServe's and ours in the same run: what one
worker reaches on this machine with nothing but the work itself.

It answers a one-instance JSON request that gives n_samples, iw_samples and seed with the same bytes as
`vae serve` (the same ELBO graph, each request's noise from its own seed, the same JSON); serving.py checks that
before it measures. It leaves out what the service adds around the work: the validation that names every bad
value (here a request of any other shape gets a bare 422), limits and deadlines, per-endpoint metric labels,
the other routes and formats, reloads. It is not a server to deploy.

    LEAN_MODEL_DIR=DIR LEAN_API_KEY=KEY uvicorn lean_reference:app --app-dir benchmarks --loop uvloop
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import queue
import sys
import threading
import time

import numpy as np
import orjson
from prometheus_client import Counter, Histogram

from service.core import scoring
from service.core.artifact import load_artifact
from service.core.runtime import OnnxRuntime, available_cores
from service.http.api.fast_path import receive_body

artifact = load_artifact(os.environ["LEAN_MODEL_DIR"], runtime="onnx")
manifest = artifact.manifest
if manifest.scoring is None or not manifest.graphs.elbo:
    sys.exit("lean_reference needs a calibrated model with an ELBO graph")
runtime = OnnxRuntime(artifact, intra_op_threads=available_cores())  # as `vae serve` with one worker
KEY = b"Bearer " + os.environ["LEAN_API_KEY"].encode()
WIDTH, SHAPE, LATENT = manifest.n_features, list(manifest.input_shape), manifest.latent_dim
JACOBIAN = float(manifest.log_jacobian.sum())
CALIBRATION = manifest.scoring.calibration
BY_ELBO = manifest.scoring.estimator == "elbo"  # the anomaly score is -ELBO, else -L_K
BERNOULLI = manifest.likelihood == "bernoulli"
REQUESTS = Counter("lean_requests", "requests by status", ["status"])
LATENCY = Histogram("lean_request_seconds", "request latency")
BATCH = Histogram("lean_batch_requests", "requests per runtime call")
ID_PREFIX = os.urandom(4).hex()
ids = itertools.count()


class Batcher:
    """Requests that arrive in one turn of the event loop, or while a call runs, go into the next call, which
    runs in one worker thread and hands every answer back in one call_soon_threadsafe."""

    def __init__(self) -> None:
        self.waiting: list[tuple] = []
        self.busy = self.due = False
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.loop: asyncio.AbstractEventLoop | None = None
        threading.Thread(target=self.work, name="lean-batcher", daemon=True).start()

    def submit(self, row: np.ndarray, n: int, k: int, seed: int) -> asyncio.Future:
        self.loop = asyncio.get_running_loop()
        future = self.loop.create_future()
        self.waiting.append((row, n, k, seed, future))
        if not self.due and not self.busy:
            self.due = True
            self.loop.call_soon(self.dispatch)
        return future

    def dispatch(self) -> None:
        self.due = False
        if self.busy or not self.waiting:
            return
        batch, self.waiting = self.waiting, []
        self.busy = True
        self.jobs.put(batch)

    def finished(self, batch: list[tuple], answers: list) -> None:
        self.busy = False
        for item, answer in zip(batch, answers, strict=True):
            if not item[4].done():
                item[4].set_result(answer)
        self.dispatch()

    def work(self) -> None:
        while True:
            batch = self.jobs.get()
            try:
                answers = answer_bytes(batch)
            except Exception as exc:  # e.g. a value outside a bernoulli model's range: the batch's requests fail
                answers = [exc] * len(batch)
            BATCH.observe(len(batch))
            assert self.loop is not None
            self.loop.call_soon_threadsafe(self.finished, batch, answers)


def answer_bytes(batch: list[tuple]) -> list[bytes]:
    """One ELBO graph call for the batch, and each request's JSON answer, as service/core/engine.py computes it."""
    n, k = batch[0][1], batch[0][2]
    if any(item[1] != n or item[2] != k for item in batch):
        raise ValueError("requests of one batch must share n_samples and iw_samples here")
    x = manifest.preprocessing.to_model(np.stack([item[0] for item in batch]))
    if BERNOULLI:
        if x.min() < -1e-6 or x.max() > 1 + 1e-6:
            raise ValueError("a value is outside the model's data range")
        x = np.clip(x, 0.0, 1.0)
    x = x.reshape([len(batch), *SHAPE]).astype(np.float32)
    eps = np.empty((len(batch), n + k, LATENT), dtype=np.float32)
    for i, item in enumerate(batch):  # L draws, then K, from the request's own seed
        np.random.default_rng(item[3]).standard_normal(dtype=np.float32, out=eps[i])
    log_px, log_ratio, kl = runtime.elbo_terms(x, eps)
    reconstruction = np.add.reduce(log_px[:, :n], axis=1) / n + JACOBIAN
    log_likelihood = scoring.bound_from_log_weights(log_px[:, n:] + log_ratio[:, n:], JACOBIAN)
    elbo = reconstruction - kl
    anomaly = -(elbo if BY_ELBO else log_likelihood)
    p_value = scoring.p_values(anomaly, CALIBRATION.sorted_scores, CALIBRATION.n)
    threshold = CALIBRATION.threshold
    columns = (elbo, reconstruction, kl, log_likelihood, anomaly, p_value)
    return [
        orjson.dumps(
            {
                "elbo": [e],
                "reconstruction": [r],
                "kl": [q],
                "log_likelihood": [ll],
                "anomaly_score": [a],
                "threshold": threshold,
                "is_anomaly": [a > threshold],
                "p_value": [p],
                "n_samples": n,
                "iw_samples": k,
                "seed": item[3],
            }
        )
        for item, e, r, q, ll, a, p in zip(batch, *(c.tolist() for c in columns), strict=True)
    ]


class AccessLog:
    """Each request's line and metrics, handed to a thread of their own 50 ms after the first of them."""

    def __init__(self) -> None:
        self.pending: list[tuple] = []
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self.work, name="lean-access-log", daemon=True).start()

    def add(self, entry: tuple) -> None:
        if not self.pending:
            asyncio.get_running_loop().call_later(0.05, self.hand_over)
        self.pending.append(entry)

    def hand_over(self) -> None:
        pending, self.pending = self.pending, []
        self.jobs.put(pending)

    def work(self) -> None:
        while True:
            lines, statuses = [], {}
            for request_id, status, started, finished in self.jobs.get():
                LATENCY.observe(finished - started)
                statuses[status] = statuses.get(status, 0) + 1
                line = {"logger": "lean.access", "request_id": request_id, "path": "/elbo", "status": status}
                lines.append(orjson.dumps(line | {"duration_ms": round((finished - started) * 1000, 3)}))
            for status, count in statuses.items():
                REQUESTS.labels(str(status)).inc(count)
            sys.stdout.buffer.write(b"\n".join(lines) + b"\n")
            sys.stdout.flush()


batcher, access_log = Batcher(), AccessLog()


def problem(data) -> str | None:
    """What is wrong with a body for this yardstick (one instance, the three options given), or None."""
    if not isinstance(data, dict):
        return "expected a JSON object"
    instances = data.get("instances")
    if not isinstance(instances, list) or len(instances) != 1 or not isinstance(instances[0], list):
        return "instances: expected a list of one instance"
    if len(instances[0]) != WIDTH:
        return f"instances[0]: expected {WIDTH} numbers"
    for name in ("n_samples", "iw_samples", "seed"):
        value = data.get(name)
        if type(value) is not int or value < (0 if name == "seed" else 1):
            return f"{name}: expected a {'non-negative' if name == 'seed' else 'positive'} integer"
    return None


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    started = time.perf_counter()
    request_id, authorized = None, False
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorized = value == KEY
        elif name == b"x-request-id":
            request_id = value
    request_id = request_id or f"{ID_PREFIX}{next(ids):x}".encode()
    body = await receive_body(receive)
    if body is None:  # the client went away
        return
    status, answer = 200, b""
    if scope["path"] != "/elbo" or scope["method"] != "POST":
        status, answer = 404, b'{"detail":"not found"}'
    elif not authorized:
        status, answer = 401, b'{"detail":"missing or wrong API key"}'
    else:
        try:
            data = orjson.loads(body)
            wrong = problem(data)
        except orjson.JSONDecodeError:
            wrong = "not JSON"
        if wrong is None:
            row = np.asarray(data["instances"][0], dtype=np.float64)
            wrong = None if math.isfinite(np.add.reduce(row)) else "instances[0]: expected finite numbers"
        if wrong is None:
            result = await batcher.submit(row, data["n_samples"], data["iw_samples"], data["seed"])
            status, answer = (
                (422, orjson.dumps({"detail": str(result)})) if isinstance(result, Exception) else (200, result)
            )
        else:
            status, answer = 422, orjson.dumps({"detail": wrong})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*headers, (b"x-request-id", request_id)]})
    await send({"type": "http.response.body", "body": answer})
    access_log.add((request_id.decode(), status, started, time.perf_counter()))
