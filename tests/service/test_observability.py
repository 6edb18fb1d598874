"""Metrics updated once per turn of the event loop, and access log lines written by a thread of their own,
read the same as when each request updated and logged at once."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from service.http.observability import (
    ACCESS_LOG,
    LATENCY_BUCKETS,
    METRICS_HELD_S,
    JsonFormatter,
    JsonLinesHandler,
    Metrics,
    json_line,
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


def test_requests_and_batches_reach_the_metrics_after_the_hold_or_at_a_scrape():
    metrics = Metrics(model="digits")
    requests_200 = metrics.requests.labels("/elbo", "200", "digits", "v1", "")
    batch_size = metrics.batch_size.labels("/elbo")

    async def scenario():
        for status in (200, 200, 422):
            metrics.start()
            metrics.finish("/elbo", status, 0.002, "v1")
        metrics.observe_batch("/elbo", 3, 5, [0.001, 0.002, 0.003])
        metrics.start()  # still in flight
        await asyncio.sleep(0)  # the turn ends: still held
        held = requests_200._value.get(), batch_size._sum.get()
        await asyncio.sleep(METRICS_HELD_S * 2)
        return held

    assert asyncio.run(scenario()) == (0, 0)
    assert batch_size._sum.get() == 5
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


FIELDS = {"request_id": "r-1", "method": "POST", "endpoint": "/elbo", "status": 200, "latency_ms": 1.234}


def test_json_line_is_the_line_the_formatter_writes_for_a_record():
    record = logging.getLogger("vae.access").makeRecord(
        "vae.access", logging.INFO, __file__, 0, "request", (), None, extra={"fields": FIELDS}
    )
    record.created = 1795684338.69749
    assert json_line(record.created, "info", "vae.access", FIELDS) == JsonFormatter().format(record)
    assert json_line(record.created, "info", "vae.access", FIELDS) == (
        '{"ts":1795684338.697,"level":"info","logger":"vae.access","request_id":"r-1","method":"POST",'
        '"endpoint":"/elbo","status":200,"latency_ms":1.234}'
    )


@contextmanager
def access_log_to(*handlers: logging.Handler) -> Iterator[None]:
    """The `vae.access` lines to these handlers only (not on to the `vae` logger's), at info."""
    ACCESS_LOG.drain()  # earlier tests' lines first, to the handlers as they were
    logger = logging.getLogger("vae.access")
    before = logger.handlers[:], logger.level, logger.propagate
    logger.handlers[:] = list(handlers)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers[:], logger.level, logger.propagate = before[0], before[1], before[2]


def hand_over(n: int) -> None:
    async def scenario():
        for i in range(n):
            ACCESS_LOG.add({"request_id": f"r-{i}", "status": 200})

    asyncio.run(scenario())
    ACCESS_LOG.drain()


def test_the_access_log_writes_a_hand_over_in_one_write_as_the_service_configures_it():
    stream = CountingStream()
    with access_log_to(JsonLinesHandler(stream)):
        hand_over(4)
    assert stream.writes == 1
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["request_id"] for line in lines] == [f"r-{i}" for i in range(4)]
    assert {(line["level"], line["logger"]) for line in lines} == {("info", "vae.access")}


def test_another_handler_on_the_way_gets_the_records_and_the_json_lines_stay_the_same():
    stream, collect = CountingStream(), Collect()
    with access_log_to(JsonLinesHandler(stream), collect):
        hand_over(3)
    assert stream.writes == 3  # through logging: a write per line, as any StreamHandler
    assert [r.fields["request_id"] for r in collect.records] == ["r-0", "r-1", "r-2"]
    assert [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()] == ["r-0", "r-1", "r-2"]
    formatted = [JsonFormatter().format(r) for r in collect.records]
    assert stream.getvalue().splitlines() == formatted


def test_a_filter_sends_the_access_log_through_its_records():
    stream = CountingStream()
    handler = JsonLinesHandler(stream)
    handler.addFilter(lambda record: record.fields["request_id"] != "r-1")
    with access_log_to(handler):
        hand_over(3)
    assert [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()] == ["r-0", "r-2"]
