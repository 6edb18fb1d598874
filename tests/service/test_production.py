"""Auth, limits, timeouts, metrics, request ids, CORS and logs, with exact statuses and values."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import threading
import time
import weakref

import numpy as np
import pytest

from service.core.artifact import load_artifact
from service.core.engine import Deadline, PreparedElbo
from service.core.errors import Timeout
from service.core.runtime import OnnxRuntime
from service.http.batching import MicroBatcher
from service.http.executor import elbo_units
from service.http.live_model import freeze_long_lived
from service.http.observability import ACCESS_LOG, JsonFormatter, Metrics
from service.http.settings import Settings

DIGIT = [0.0] * 64


@pytest.fixture
def make_client(start_app, digits_model_dir):
    return lambda runtime=None, **settings: start_app(digits_model_dir, runtime, **settings)


def error(response, status):
    assert response.status_code == status, response.text
    return response.json()["error"]


# --- API key -----------------------------------------------------------------------------------------------
def test_api_key_guards_everything_but_health(make_client):
    client = make_client(api_key="s3cret")
    missing = client.post("/elbo", json={"instances": [DIGIT]})
    assert error(missing, 401) == "this service needs an API key: send the header `Authorization: Bearer <key>`"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert (
        client.post("/elbo", json={"instances": [DIGIT]}, headers={"authorization": "Bearer wrong"}).status_code == 401
    )
    assert (
        client.post("/elbo", json={"instances": [DIGIT]}, headers={"authorization": "Basic s3cret"}).status_code == 401
    )
    good = {"authorization": "Bearer s3cret"}
    assert client.post("/elbo", json={"instances": [DIGIT]}, headers=good).status_code == 200
    for path in ("/v1/model", "/metrics"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers=good).status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200


def test_no_api_key_by_default(make_client):
    assert make_client().post("/encode", json={"instances": [DIGIT]}).status_code == 200


# --- limits --------------------------------------------------------------------------------------------------
def test_body_over_the_limit(make_client):
    client = make_client(max_body_bytes=2048)
    body = json.dumps({"instances": [DIGIT] * 20})
    assert error(client.post("/elbo", content=body, headers={"content-type": "application/json"}), 413) == (
        f"the body is {len(body)} bytes; the limit is 2048 bytes (VAE_MAX_BODY_BYTES)"
    )


def test_streamed_body_over_the_limit(make_client):
    client = make_client(max_body_bytes=2048)

    def chunks():
        yield b'{"instances": ['
        for _ in range(20):
            yield json.dumps(DIGIT).encode() + b","
        yield b"[]]}"

    response = client.post("/elbo", content=chunks(), headers={"content-type": "application/json"})
    assert error(response, 413) == "the body is more; the limit is 2048 bytes (VAE_MAX_BODY_BYTES)"


def test_configured_instance_and_sample_limits(make_client):
    client = make_client(max_instances=2, max_samples=3, max_iw_samples=4)
    assert error(client.post("/encode", json={"instances": [DIGIT] * 3}), 413) == (
        "instances: 3 instances exceed the limit of 2 per request (VAE_MAX_INSTANCES)"
    )
    assert error(client.post("/elbo", json={"instances": [DIGIT], "n_samples": 4}), 422) == (
        "n_samples: 4 exceeds the limit of 3 (VAE_MAX_SAMPLES)"
    )
    assert error(client.post("/elbo", json={"instances": [DIGIT], "n_samples": 1, "iw_samples": 5}), 422) == (
        "iw_samples: 5 exceeds the limit of 4 (VAE_MAX_IW_SAMPLES)"
    )
    # Left out, n_samples is the model's calibrated L, and the message says whose it is.
    default_l = client.get("/v1/model").json()["scoring"]["n_samples"]
    assert default_l > 3
    assert error(client.post("/elbo", json={"instances": [DIGIT], "iw_samples": 1}), 422) == (
        f"n_samples: {default_l} (the model's default; send a smaller one) exceeds the limit of 3 (VAE_MAX_SAMPLES)"
    )


# --- timeouts ------------------------------------------------------------------------------------------------
class SlowOnce(OnnxRuntime):
    """An ONNX runtime whose every graph call stalls while `slow` is set."""

    slow = False

    def _run(self, graph, *values):
        if self.slow:
            time.sleep(0.5)
        return super()._run(graph, *values)


@pytest.mark.parametrize("batching", [True, False])
def test_timeout_gives_503_and_the_server_stays_healthy(make_client, digits_model_dir, batching):
    runtime = SlowOnce(load_artifact(digits_model_dir))
    client = make_client(runtime=runtime, request_timeout_s=0.1, batching=batching)
    runtime.slow = True
    response = client.post("/elbo", json={"instances": [DIGIT], "seed": 0})
    assert response.status_code == 503
    assert response.json() == {
        "error": "the request did not finish within 0.1 s (VAE_REQUEST_TIMEOUT_S)",
        "code": "timeout",
    }
    assert response.headers["retry-after"] == "1"
    runtime.slow = False
    time.sleep(0.6)  # let the abandoned call finish in its thread
    assert client.get("/readyz").status_code == 200
    assert client.post("/elbo", json={"instances": [DIGIT], "seed": 0}).status_code == 200


# --- metrics -------------------------------------------------------------------------------------------------
def metric(text: str, metric_name: str, **labels) -> float:
    """The value of the one sample of `metric_name` whose labels include `labels`."""
    values = [
        float(value)
        for name, found, value in re.findall(r"^(\w+)(?:{(.*)})? (\S+)$", text, re.MULTILINE)
        if name == metric_name and set(f'{k}="{v}"' for k, v in labels.items()) <= set(split_labels(found))
    ]
    assert len(values) == 1, f"{metric_name} {labels}: {len(values)} samples"
    return values[0]


def split_labels(text: str) -> list[str]:
    return re.findall(r'\w+="(?:[^"\\]|\\.)*"', text)


def test_metrics_count_requests_latencies_batches_and_the_model(make_client):
    client = make_client()
    for _ in range(3):
        client.post("/elbo", json={"instances": [DIGIT, DIGIT], "seed": 0})
    client.post("/elbo", json={"instances": []})
    client.get("/nope")
    text = client.get("/metrics").text
    assert metric(text, "vae_requests_total", endpoint="/elbo", status="200") == 3
    assert metric(text, "vae_requests_total", endpoint="/elbo", status="422") == 1
    assert metric(text, "vae_requests_total", endpoint="unmatched", status="404") == 1
    assert metric(text, "vae_request_seconds_count", endpoint="/elbo") == 4
    assert metric(text, "vae_requests_in_flight") == 1  # this /metrics request
    assert metric(text, "vae_batch_requests_count", endpoint="/elbo") == 3
    assert metric(text, "vae_batch_instances_sum", endpoint="/elbo") == 6
    assert metric(text, "vae_batch_queue_seconds_count", endpoint="/elbo") == 3
    version = client.get("/v1/model").json()["version"]
    assert metric(text, "vae_model_info", format_version="1", name="digits", runtime="onnx", version=version) == 1


def test_requests_are_labelled_with_the_model_and_the_version_that_answered(make_client):
    client = make_client()
    version = client.get("/v1/model").json()["version"]
    assert client.post("/elbo", json={"instances": [DIGIT], "seed": 0}).status_code == 200
    assert client.get("/healthz").status_code == 200
    text = client.get("/metrics").text
    assert metric(text, "vae_requests_total", endpoint="/elbo", status="200", model="digits", version=version) == 1
    assert metric(text, "vae_request_seconds_count", endpoint="/elbo", model="digits", version=version) == 1
    assert metric(text, "vae_requests_total", endpoint="/v1/model", model="digits", version=version) == 1
    # A request no model answered has no version; nothing sets an operation outside /v2.
    assert metric(text, "vae_requests_total", endpoint="/healthz", model="digits", version="", operation="") == 1


def test_metrics_include_the_process_and_python(make_client):
    text = make_client().get("/metrics").text
    assert metric(text, "process_resident_memory_bytes") > 0
    assert metric(text, "process_open_fds") > 0
    assert metric(text, "python_gc_collections_total", generation="0") >= 0
    assert re.search(r'^python_info{implementation="CPython",.*} 1\.0$', text, re.MULTILINE)


def test_head_metrics_answers_like_get_without_a_body(make_client):
    client = make_client()
    response = client.head("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=1.0.0; charset=utf-8"
    assert response.content == b""


def test_the_operation_label_takes_only_known_operations():
    metrics = Metrics(model="digits")
    metrics.count("/v2/models/{model_name}/infer", 200, 0.01, "abc", "elbo")
    metrics.count("/v2/models/{model_name}/infer", 200, 0.01, "abc", "made-up")
    text = metrics.exposition().decode()
    labels = dict(endpoint="/v2/models/{model_name}/infer", status="200", model="digits", version="abc")
    assert metric(text, "vae_requests_total", **labels, operation="elbo") == 1
    assert metric(text, "vae_requests_total", **labels, operation="") == 1


def series(client, **headers) -> set[str]:
    """The sample lines' names and labels in /metrics, without their values."""
    text = client.get("/metrics", headers=headers).text
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


@pytest.mark.parametrize("api_key", [None, "s3cret"])
def test_metric_series_stay_fixed_whatever_the_paths(make_client, api_key):
    """3,000 requests to made-up paths used to add 48,496 series (slash redirects, 413s, CORS preflights)."""
    client = make_client(api_key=api_key, max_body_bytes=2048, cors_origins="https://ui.example")
    key = {"authorization": f"Bearer {api_key}"} if api_key else {}

    def made_up_requests(start: int, n: int) -> None:
        for i in range(start, start + n):
            assert client.get(f"/nope-{i}", headers=key).status_code == 404
            assert (
                client.get(f"/ui/page-{i}/", headers=key, follow_redirects=False).status_code == 307
            )  # to /ui/page-{i}
            assert client.post(f"/big-{i}", content=b"x" * 4096, headers=key).status_code == 413
            preflight = client.options(
                f"/cors-{i}", headers={"origin": "https://ui.example", "access-control-request-method": "POST"}
            )
            assert preflight.status_code == 200
            assert client.get(f"/v2/models/m-{i}/ready", headers=key).status_code == 404
            assert client.get(f"/elbo-{i}").status_code == (401 if api_key else 404)

    made_up_requests(0, 50)  # every kind of label and status seen once
    series(client, **key)  # and /metrics itself, counted once its answer is sent
    before = series(client, **key)
    made_up_requests(50, 450)
    assert series(client, **key) == before
    # Real routes keep their templates; everything else shares one label.
    endpoints = {re.search(r'endpoint="([^"]*)"', s).group(1) for s in before if 'endpoint="' in s}
    assert endpoints == {"unmatched", "/metrics", "/v2/models/{model_name}/ready"}  # a redirect is unmatched


def test_a_413_and_a_401_are_counted_on_their_route(make_client):
    client = make_client(api_key="s3cret", max_body_bytes=2048)
    assert client.post("/elbo", content=b"x" * 4096).status_code == 413
    assert client.post("/decode", json={"z": [[0.0] * 4]}).status_code == 401
    assert client.post("/v2/models/digits-elbo/infer", json={}).status_code == 401
    text = client.get("/metrics", headers={"authorization": "Bearer s3cret"}).text
    assert metric(text, "vae_requests_total", endpoint="/elbo", status="413") == 1
    assert metric(text, "vae_requests_total", endpoint="/decode", status="401") == 1
    assert metric(text, "vae_requests_total", endpoint="/v2/models/{model_name}/infer", status="401") == 1


# --- request ids and logs ------------------------------------------------------------------------------------
def test_request_id_is_echoed_or_generated(make_client):
    client = make_client()
    assert client.get("/healthz", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    assert re.fullmatch(r"[0-9a-f]{32}", client.get("/healthz").headers["x-request-id"])


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_one_structured_log_line_per_request(make_client):
    client = make_client()
    collect = Collect()
    logging.getLogger("vae.access").addHandler(collect)
    try:
        client.post("/elbo", json={"instances": [DIGIT] * 3, "seed": 0}, headers={"x-request-id": "r-1"})
        ACCESS_LOG.drain()  # the line is written by the access log's own thread
    finally:
        logging.getLogger("vae.access").removeHandler(collect)
    (record,) = collect.records
    fields = record.fields
    assert (fields["request_id"], fields["method"], fields["endpoint"], fields["status"], fields["batch_size"]) == (
        "r-1",
        "POST",
        "/elbo",
        200,
        3,
    )
    assert fields["latency_ms"] > 0
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "r-1" and line["level"] == "info" and line["logger"] == "vae.access"


# --- CORS ----------------------------------------------------------------------------------------------------
def test_cors_is_off_by_default(make_client):
    response = make_client().options(
        "/elbo", headers={"origin": "https://a.example", "access-control-request-method": "POST"}
    )
    assert "access-control-allow-origin" not in response.headers


def test_cors_allows_listed_origins(make_client):
    client = make_client(cors_origins="https://a.example, https://b.example")
    allowed = client.options("/elbo", headers={"origin": "https://b.example", "access-control-request-method": "POST"})
    assert allowed.headers["access-control-allow-origin"] == "https://b.example"
    other = client.options("/elbo", headers={"origin": "https://evil.example", "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in other.headers


# --- settings ------------------------------------------------------------------------------------------------
def test_threads_never_oversubscribe_the_cores(digits_model_dir, monkeypatch):
    monkeypatch.setattr("service.http.settings.available_cores", lambda: 8)  # the CPU affinity's, not os.cpu_count's
    assert Settings(model_dir=digits_model_dir, workers=4).runtime_threads == 2
    assert Settings(model_dir=digits_model_dir, workers=16).runtime_threads == 1
    assert Settings(model_dir=digits_model_dir, workers=2, threads=3).runtime_threads == 3


# --- the garbage collector ----------------------------------------------------------------------------------
class Node:
    """An object in a reference cycle: only the garbage collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_freeze_long_lived_keeps_what_is_alive_from_collections_and_frees_what_it_kept_before():
    node = Node()
    gone = weakref.ref(node)
    try:
        freeze_long_lived()
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert gone() is not None  # frozen: the collector no longer walks it, garbage or not
        freeze_long_lived()  # as after a reload: what was frozen and is garbage now is collected
        assert gone() is None
    finally:
        gc.unfreeze()


def test_a_started_service_has_frozen_its_long_lived_objects(make_client):
    gc.unfreeze()
    client = make_client()
    assert client.get("/readyz").status_code == 200
    assert gc.get_freeze_count() > 0
    gc.unfreeze()


# --- the micro-batcher ---------------------------------------------------------------------------------------
def test_batching_combines_concurrent_requests_and_isolates_a_failure():
    seen = []

    def run_batch(items):
        seen.append(list(items))
        if "bad" in items:
            raise ValueError("bad item")
        time.sleep(0.05)
        return [f"done {item}" for item in items]

    async def scenario():
        batcher = MicroBatcher(run_batch, max_batch_size=100, max_delay_s=0.0)
        first = asyncio.create_task(batcher.submit("a", 1))
        await asyncio.sleep(0.01)  # "a" is running; the rest queue up behind it
        rest = [asyncio.create_task(batcher.submit(item, 1)) for item in ("b", "bad", "c")]
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        await batcher.close()
        return results

    results = asyncio.run(scenario())
    assert results[:2] == ["done a", "done b"] and results[3] == "done c"
    assert isinstance(results[2], ValueError)
    assert seen[0] == ["a"] and seen[1] == ["b", "bad", "c"]  # a lone request runs at once; the rest together
    assert seen[2:] == [["b"], ["bad"], ["c"]]  # the failed batch, item by item


def test_a_batch_runs_on_the_event_loop_when_its_measured_cost_fits_the_budget():
    ran = []

    def run_batch(items):
        ran.append((list(items), threading.current_thread().name))
        if "bad" in items:
            raise ValueError("bad item")
        return [f"done {item}" for item in items]

    async def scenario():
        batcher = MicroBatcher(run_batch, max_batch_size=10, max_delay_s=0.0, inline_budget_s=0.01)
        assert await batcher.submit("first", 1) == "done first"  # no cost measured yet: the thread
        assert await batcher.submit("cheap", 1) == "done cheap"  # measured far below the budget: here
        with pytest.raises(ValueError, match="bad item"):  # inline too, and its error is its own
            await batcher.submit("bad", 1)
        assert await batcher.submit("costly", 1, units=10**9) == "done costly"  # rate x units over the budget
        assert await asyncio.gather(batcher.submit("a", 1), batcher.submit("b", 1)) == ["done a", "done b"]
        together = [batcher.submit("c", 1), batcher.submit("d", 1, units=10**9)]  # over the budget together
        assert await asyncio.gather(*together) == ["done c", "done d"]
        await batcher.close()

    asyncio.run(scenario())
    loop_thread = threading.current_thread().name  # asyncio.run runs the loop in this thread
    assert ran == [
        (["first"], "vae-batcher"),
        (["cheap"], loop_thread),
        (["bad"], loop_thread),  # alone, its error is its own: not run again
        (["costly"], "vae-batcher"),
        (["a", "b"], loop_thread),  # two together, cheap together: here
        (["c", "d"], "vae-batcher"),
    ]


def test_a_lone_request_after_lone_calls_runs_at_once_in_its_own_turn():
    ran, batches = [], []

    def run_batch(items):
        ran.append(list(items))
        if "bad" in items:
            raise ValueError("bad item")
        return [f"done {item}" for item in items]

    async def scenario():
        batcher = MicroBatcher(
            run_batch,
            max_batch_size=10,
            max_delay_s=0.0,
            on_batch=lambda requests, instances, waits: batches.append(requests),
            inline_budget_s=0.01,
        )
        outcomes = []
        for item in ("first", "second"):  # two lone calls (the thread, then inline) before any runs at once
            outcomes.append((batcher.run_now(item, 1), await batcher.submit(item, 1)))
        state: dict = {}
        outcomes.append(batcher.run_now("third", 1, state))
        outcomes.append(state)
        outcomes.append(batcher.run_now("same turn", 1))  # another one in the same turn of the loop: it queues
        await asyncio.sleep(0)
        outcomes.append(batcher.run_now("costly", 1, units=10**9))  # over the budget: it queues
        ran_now, error = batcher.run_now("bad", 1)
        outcomes.append((ran_now, repr(error)))
        together = [asyncio.ensure_future(batcher.submit(item, 1)) for item in ("a", "b")]
        await asyncio.sleep(0)
        outcomes.append(batcher.run_now("while a call waits", 1))
        outcomes.append(await asyncio.gather(*together))
        await asyncio.sleep(0)
        outcomes.append(batcher.run_now("after a call of two", 1))  # the calls in a row of one request start over
        await batcher.close()
        return outcomes

    assert asyncio.run(scenario()) == [
        ((False, None), "done first"),
        ((False, None), "done second"),
        (True, "done third"),
        {"batch_size": 1},
        (False, None),
        (False, None),
        (True, "ValueError('bad item')"),
        (False, None),
        ["done a", "done b"],
        (False, None),
    ]
    assert ran == [["first"], ["second"], ["third"], ["bad"], ["a", "b"]]
    assert batches == [1, 1, 1, 1, 2]  # every call counted in the metrics, as a queued one is


def test_a_deadline_timer_is_armed_only_for_a_request_that_waits():
    release = threading.Event()

    def run_batch(items):
        if "slow" in items:
            release.wait(5)
        return [f"done {item}" for item in items]

    async def scenario():
        loop = asyncio.get_running_loop()
        armed = []
        call_at = loop.call_at
        loop.call_at = lambda when, callback, *args, **kwargs: (armed.append(args), call_at(when, callback, *args))[1]
        batcher = MicroBatcher(run_batch, max_batch_size=10, max_delay_s=0.0, inline_budget_s=1.0)
        assert await batcher.submit("warm-up", 1) == "done warm-up"  # measured cheap from now on
        assert await batcher.enqueue("inline", 1, deadline=Deadline.after(10)) == "done inline"
        assert armed == []  # it ran on the loop in the turn it arrived in: no timer
        slow = batcher.enqueue("slow", 1, units=10**9, deadline=Deadline.after(10))  # over the budget: the thread
        await asyncio.sleep(0.05)
        behind = batcher.enqueue("behind", 1, deadline=Deadline.after(0.1))  # waits behind the call in the thread
        with pytest.raises(Timeout, match=r"^the request did not finish within 0.1 s \(VAE_REQUEST_TIMEOUT_S\)$"):
            await behind
        release.set()
        assert await slow == "done slow"
        deadline_timers = [args for args in armed if args and isinstance(args[-1], Deadline)]  # not asyncio.sleep's
        assert len(deadline_timers) == 2  # the one in the thread, and the one behind it
        await batcher.close()
        return list(batcher._waiting)

    assert asyncio.run(scenario()) == []  # the request that timed out left the queue


def test_a_queue_longer_than_a_batch_runs_inline_one_batch_a_turn():
    turns = []  # the loop's turn each inline batch ran in, counted by a callback that re-arms itself

    async def scenario():
        loop = asyncio.get_running_loop()
        turn = [0]

        def tick():
            turn[0] += 1
            loop.call_soon(tick)

        def run_batch(items):
            turns.append((len(items), turn[0]))
            return items

        batcher = MicroBatcher(run_batch, max_batch_size=2, max_delay_s=0.0, inline_budget_s=1.0)
        await batcher.submit("warm-up", 1)  # the thread, measuring the cost
        loop.call_soon(tick)
        results = await asyncio.gather(*(batcher.submit(i, 1) for i in range(7)))
        await batcher.close()
        return results

    assert asyncio.run(scenario()) == list(range(7))
    assert [size for size, _ in turns] == [1, 2, 2, 2, 1]
    ticks = [t for _, t in turns[1:]]
    assert ticks == sorted(set(ticks))  # each batch of the queue in a turn of its own, in order


def test_an_error_outside_the_runtime_call_fails_its_requests_and_the_batcher_goes_on():
    def on_batch(requests, instances, waits):
        if requests == 1:
            raise RuntimeError("metrics broke")

    async def scenario():
        batcher = MicroBatcher(
            lambda items: items, max_batch_size=10, max_delay_s=0.0, on_batch=on_batch, inline_budget_s=1.0
        )
        results = []
        for _ in range(3):  # in the thread, then inline: each fails alone
            with pytest.raises(RuntimeError, match="metrics broke"):
                await batcher.submit("lone", 1)
        results.append(await asyncio.gather(batcher.submit("a", 1), batcher.submit("b", 1)))
        await batcher.close()
        return results

    assert asyncio.run(scenario()) == [["a", "b"]]


def test_feature_scores_count_every_feature_in_an_elbo_requests_work():
    x = np.zeros((3, 1, 8, 8), dtype=np.float32)
    plain = PreparedElbo(x, n_samples=2, iw_samples=5, seed=0, feature_scores=False, threshold=None)
    assert elbo_units(plain, 64) == 3 * 7
    assert elbo_units(PreparedElbo(x, 2, 5, 0, True, None), 64) == 3 * 7 * 64


def test_batches_respect_the_size_limit():
    sizes = []

    def run_batch(items):
        sizes.append(sum(items))
        time.sleep(0.02)
        return items

    async def scenario():
        batcher = MicroBatcher(run_batch, max_batch_size=10, max_delay_s=0.0)
        first = asyncio.create_task(batcher.submit(1, 1))
        await asyncio.sleep(0.005)
        await asyncio.gather(first, *(batcher.submit(4, 4) for _ in range(5)))
        await batcher.close()

    asyncio.run(scenario())
    assert sizes[0] == 1 and all(size <= 10 for size in sizes) and sum(sizes) == 21


def test_a_batch_delay_waits_for_company_but_not_once_the_batch_is_full():
    calls = []

    def run_batch(items):
        calls.append((time.perf_counter(), list(items)))
        return items

    async def scenario():
        batcher = MicroBatcher(run_batch, max_batch_size=2, max_delay_s=0.3)
        started = time.perf_counter()
        await asyncio.gather(batcher.submit("a", 1), batcher.submit("b", 1))  # full at once
        full = time.perf_counter() - started
        started = time.perf_counter()
        await batcher.submit("c", 1)  # alone: waits out the delay
        alone = time.perf_counter() - started
        await batcher.close()
        return full, alone

    full, alone = asyncio.run(scenario())
    assert [items for _, items in calls] == [["a", "b"], ["c"]]
    assert full < 0.25 and alone >= 0.29


def test_a_request_given_up_before_its_batch_runs_drops_out():
    seen = []

    def run_batch(items):
        seen.append(list(items))
        time.sleep(0.05)
        return items

    async def scenario():
        batcher = MicroBatcher(run_batch, max_batch_size=10, max_delay_s=0.0)
        first = asyncio.ensure_future(batcher.submit("a", 1))
        await asyncio.sleep(0.01)  # "a" runs; the next two wait for the thread
        gone = batcher.enqueue("gone", 1)
        kept = asyncio.ensure_future(batcher.submit("kept", 1))
        gone.cancel()  # as a deadline or a client that went away does
        results = await asyncio.gather(first, kept)
        await batcher.close()
        return results

    assert asyncio.run(scenario()) == ["a", "kept"]
    assert seen == [["a"], ["kept"]]


def test_batched_and_unbatched_answers_agree(make_client):
    on, off = make_client(batching=True), make_client(batching=False)
    from sklearn.datasets import load_digits

    rows = load_digits().data[:5].tolist()
    for path, body in [
        ("/elbo", {"instances": rows, "n_samples": 3, "iw_samples": 7, "seed": 4, "feature_scores": True}),
        ("/encode", {"instances": rows}),
        ("/decode", {"z": [[0.5, -1.0, 0.0, 2.0]]}),
    ]:
        a, b = on.post(path, json=body).json(), off.post(path, json=body).json()
        for key in a:
            np.testing.assert_allclose(
                np.asarray(a[key], dtype=float), np.asarray(b[key], dtype=float), rtol=1e-6, atol=1e-6
            )


def test_the_cores_are_those_of_the_cpu_affinity(monkeypatch):
    from service.core.runtime import available_cores

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {2, 5, 7}, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert available_cores() == 3
    monkeypatch.delattr("os.sched_getaffinity", raising=False)  # macOS has none
    assert available_cores() == 64
