"""Metrics updated once per turn of the event loop, and access log lines written by a thread of their own,
read the same as when each request updated and logged at once."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from service.http.observability import (
    ACCESS_LOG,
    LATENCY_BUCKETS,
    JsonLinesHandler,
    Metrics,
    batched_lines,
    observe_all,
)

VALUES = [0.0001, 0.0005, 0.0005001, 0.003, 0.003, 0.75, 2.5, 31.0, 1e9]  # bucket edges, between and past all


def exposition(observe) -> str:
    registry = CollectorRegistry()
    histogram = Histogram("h", "h", ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry)
    observe(histogram.labels("/elbo"))
    return "\n".join(line for line in generate_latest(registry).decode().splitlines() if "_created" not in line)


def test_observe_all_writes_what_observe_writes_value_by_value():
    def one_by_one(child):
        for value in VALUES:
            child.observe(value)

    assert exposition(lambda child: observe_all(child, VALUES)) == exposition(one_by_one)
    assert 'h_bucket{endpoint="/elbo",le="0.0005"} 2.0' in exposition(lambda child: observe_all(child, VALUES))


def test_requests_reach_the_metrics_at_the_end_of_the_loop_turn_or_at_a_scrape():
    metrics = Metrics(model="digits")

    async def scenario():
        for status in (200, 200, 422):
            metrics.start()
            metrics.finish("/elbo", status, 0.002, "v1")
        metrics.start()  # still in flight
        held = metrics.requests.labels("/elbo", "200", "digits", "v1", "")._value.get()
        await asyncio.sleep(0)  # the turn ends
        return held

    assert asyncio.run(scenario()) == 0
    assert metrics.requests.labels("/elbo", "200", "digits", "v1", "")._value.get() == 2
    assert metrics.requests.labels("/elbo", "422", "digits", "v1", "")._value.get() == 1
    assert metrics.in_flight._value.get() == 1
    metrics.count("/elbo", 200, 0.001, "v1")  # outside an event loop: at once
    text = metrics.exposition().decode()
    assert 'vae_requests_total{endpoint="/elbo",model="digits",operation="",status="200",version="v1"} 3.0' in text
    assert 'vae_request_seconds_count{endpoint="/elbo",model="digits",operation="",version="v1"} 4.0' in text


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@contextmanager
def access_lines(level: int) -> Iterator[Collect]:
    """The `vae.access` records handled while the logger is at `level`; the logger as it was afterwards."""
    collect = Collect()
    logger = logging.getLogger("vae.access")
    logger.addHandler(collect)
    before = logger.level
    logger.setLevel(level)
    try:
        yield collect
    finally:
        logger.removeHandler(collect)
        logger.setLevel(before)


def test_access_log_lines_are_handled_in_order_by_the_writer_thread():
    # Lines an earlier test's event loop closed on before handing them over (ACCESS_LOG is the process's) go
    # out first, to the handlers as they were, so that only this test's lines reach `collect`.
    ACCESS_LOG.drain()

    async def scenario():
        for i in range(5):
            ACCESS_LOG.add({"request_id": f"r-{i}", "status": 200})

    with access_lines(logging.INFO) as collect:
        asyncio.run(scenario())
        ACCESS_LOG.drain()
    assert [r.fields["request_id"] for r in collect.records] == [f"r-{i}" for i in range(5)]
    assert {r.threadName for r in collect.records} == {"vae-access-log"}
    assert all(r.getMessage() == "request" and r.levelno == logging.INFO for r in collect.records)


def test_no_access_log_work_below_info():
    with access_lines(logging.WARNING) as collect:
        ACCESS_LOG.add({"request_id": "quiet"})
        ACCESS_LOG.drain()
    assert collect.records == []


def test_series_are_looked_up_once_and_are_the_metrics_own():
    metrics = Metrics(model="digits")
    metrics.observe_batch("/elbo", 3, 5, [0.001, 0.002, 0.003])
    metrics.observe_batch("/elbo", 1, 2, [0.004])
    assert metrics._series_of(metrics.batch_size, "/elbo") is metrics.batch_size.labels("/elbo")
    text = metrics.exposition().decode()
    assert 'vae_batch_instances_sum{endpoint="/elbo"} 7.0' in text
    assert 'vae_batch_requests_count{endpoint="/elbo"} 2.0' in text
    assert 'vae_batch_queue_seconds_count{endpoint="/elbo"} 4.0' in text


class CountingStream(io.StringIO):
    def __init__(self):
        super().__init__()
        self.writes = 0

    def write(self, text):
        self.writes += 1
        return super().write(text)


def json_lines_logger(stream: CountingStream) -> tuple[logging.Logger, JsonLinesHandler]:
    handler = JsonLinesHandler(stream)
    logger = logging.getLogger("vae.test-json-lines")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, handler


def test_a_batch_of_json_lines_is_written_at_its_end_in_one_write():
    stream = CountingStream()
    logger, _ = json_lines_logger(stream)
    with batched_lines(logger):
        for i in range(3):
            logger.info("line %d", i)
        assert stream.writes == 0  # held until the batch ends
    assert stream.writes == 1
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["line 0", "line 1", "line 2"]
    assert {line["logger"] for line in lines} == {"vae.test-json-lines"}
    logger.info("after")  # outside a batch: a write per line, as any StreamHandler
    assert stream.writes == 2
    assert json.loads(stream.getvalue().splitlines()[-1])["message"] == "after"


def test_other_threads_lines_are_not_held_by_a_batch():
    stream = CountingStream()
    logger, _ = json_lines_logger(stream)
    with batched_lines(logger):
        logger.info("held")
        other = threading.Thread(target=logger.info, args=("from another thread",))
        other.start()
        other.join()
        assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == ["from another thread"]
    assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == ["from another thread", "held"]


def test_the_access_log_thread_writes_a_hand_over_in_one_write():
    ACCESS_LOG.drain()
    stream = CountingStream()
    handler = JsonLinesHandler(stream)
    logger = logging.getLogger("vae.access")
    logger.addHandler(handler)
    before = logger.level
    logger.setLevel(logging.INFO)

    async def scenario():
        for i in range(4):
            ACCESS_LOG.add({"request_id": f"r-{i}", "status": 200})

    try:
        asyncio.run(scenario())
        ACCESS_LOG.drain()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)
    assert stream.writes == 1
    assert [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()] == [f"r-{i}" for i in range(4)]
