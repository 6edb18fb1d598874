"""A yardstick for benchmarks/serving.py: the lean one-worker server issue 15 describes, answering POST /elbo.

Issue 15 measured "a throwaway lean server" to show how much room Python has: a bare ASGI callable under
uvicorn, orjson parsing, numpy validation, a batcher feeding one worker thread, ONNX Runtime, the ELBO, L_K, the
decision and the p-value, an X-Request-ID, and Prometheus metrics and a JSON access log updated once per batch.
This is that server, so that its rate can be measured beside TorchServe's and ours in the same run: what one
worker reaches on this machine with nothing but the work itself.

Its parts that are not the HTTP handling are the service's own: the engine's preprocessing and range check
(VaeEngine.to_model), the seeded generators of a batch (service/core/seeding.py), the scoring maths
(service/core/scoring.py), and the Observer that records a request's id, metrics and access log line
(service/http/observability.py: metrics and log lines reach Prometheus and the log thread once per hand-over,
not per request). So it answers a one-instance JSON request that gives n_samples, iw_samples and seed with the
same bytes as `vae serve`; serving.py checks that before it measures. It leaves out what the service adds around
the work: the validation that names every bad value (here a request of any other shape gets a bare 422), limits
and deadlines, the other routes and formats, reloads. It is not a server to deploy.

    LEAN_MODEL_DIR=DIR LEAN_API_KEY=KEY uvicorn lean_reference:app --app-dir benchmarks --loop uvloop
"""

from __future__ import annotations

import asyncio
import math
import os
import queue
import sys
import threading

import numpy as np
import orjson

from service.core import scoring
from service.core.artifact import load_artifact
from service.core.engine import VaeEngine, scored_bound
from service.core.runtime import OnnxRuntime, available_cores
from service.core.seeding import seeded_generators
from service.http.api.fast_path import receive_body
from service.http.observability import Metrics, Observer, configure_logging

ENDPOINT = "/elbo"
artifact = load_artifact(os.environ["LEAN_MODEL_DIR"], runtime="onnx")
manifest = artifact.manifest
if not manifest.graphs.elbo:
    sys.exit("lean_reference needs a model with an ELBO graph")
# Two ONNX Runtime threads, as `vae serve` gives one worker on two cores.
engine = VaeEngine(manifest, OnnxRuntime(artifact, intra_op_threads=available_cores()))
KEY = b"Bearer " + os.environ["LEAN_API_KEY"].encode()
WIDTH, LATENT = manifest.n_features, manifest.latent_dim
JACOBIAN = float(manifest.log_jacobian.sum())
CALIBRATION = manifest.scoring.calibration  # load_artifact refuses a model without one
configure_logging("info")  # the access log as the service writes it: JSON lines on stderr
metrics = Metrics(manifest.name)
observer = Observer(metrics, lambda path: ENDPOINT)  # every request it answers is POST /elbo


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
            metrics.observe_batch(ENDPOINT, len(batch), len(batch), [])
            try:
                answers = answer_bytes(batch)
            except Exception as exc:  # e.g. a value outside a bernoulli model's range: the batch's requests fail
                answers = [exc] * len(batch)
            assert self.loop is not None
            self.loop.call_soon_threadsafe(self.finished, batch, answers)


def answer_bytes(batch: list[tuple]) -> list[bytes]:
    """One ELBO graph call for the batch, and each request's JSON answer, as service/core/engine.py computes it."""
    n, k = batch[0][1], batch[0][2]
    if any(item[1] != n or item[2] != k for item in batch):
        raise ValueError("requests of one batch must share n_samples and iw_samples here")
    x = engine.to_model(np.stack([item[0] for item in batch]))
    eps = np.empty((len(batch), n + k, LATENT), dtype=np.float32)
    for i, rng in enumerate(seeded_generators([item[3] for item in batch])):  # L draws, then K, from its own seed
        rng.standard_normal(dtype=np.float32, out=eps[i])
    log_px, log_ratio, kl = engine.runtime.elbo_terms(x, eps)
    reconstruction = np.add.reduce(log_px[:, :n], axis=1) / n + JACOBIAN
    log_likelihood = scoring.bound_from_log_weights(log_px[:, n:] + log_ratio[:, n:], JACOBIAN)
    elbo = reconstruction - kl
    anomaly = -scored_bound(engine.estimator, elbo, log_likelihood)
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


batcher = Batcher()


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
    started = observer.start()
    given_id, authorized = None, False
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorized = value == KEY
        elif name == b"x-request-id":
            given_id = value
    request_id = observer.request_id(given_id)
    status = 500  # recorded as the fast path records a request whose client went away before its body came
    try:
        status, answer = await answer_of(scope, receive, authorized)
        if answer is None:  # the client went away: nobody to answer
            return
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(answer)).encode()),
            (b"x-request-id", request_id.encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})
    finally:
        observer.finish(started, request_id, "POST", ENDPOINT, status, None, None)


async def answer_of(scope, receive, authorized: bool) -> tuple[int, bytes | None]:
    """The status and body of the answer; (500, None) when the client went away before its body arrived."""
    body = await receive_body(receive)
    if body is None:
        return 500, None
    if scope["path"] != ENDPOINT or scope["method"] != "POST":
        return 404, b'{"detail":"not found"}'
    if not authorized:
        return 401, b'{"detail":"missing or wrong API key"}'
    try:
        data = orjson.loads(body)
        wrong = problem(data)
    except orjson.JSONDecodeError:
        wrong = "not JSON"
    if wrong is None:
        row = np.asarray(data["instances"][0], dtype=np.float64)
        wrong = None if math.isfinite(np.add.reduce(row)) else "instances[0]: expected finite numbers"
    if wrong is not None:
        return 422, orjson.dumps({"detail": wrong})
    result = await batcher.submit(row, data["n_samples"], data["iw_samples"], data["seed"])
    if isinstance(result, Exception):
        return 422, orjson.dumps({"detail": str(result)})
    return 200, result
