"""Metrics updated once per turn of the event loop, and access log lines written by a thread of their own,
read the same as when each request updated and logged at once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from service.http.observability import ACCESS_LOG, LATENCY_BUCKETS, Metrics, observe_all

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
