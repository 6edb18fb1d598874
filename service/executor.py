"""Runs the engine's work off the event loop: through the micro-batchers when batching is on, with a
per-request timeout either way. The routes await these methods; the engine stays synchronous."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi.concurrency import run_in_threadpool

from service.batching import MicroBatcher
from service.engine import PreparedElbo, Encoded, Scored, VaeEngine
from service.errors import Timeout
from service.observability import Metrics
from service.settings import Settings


class Executor:
    def __init__(self, engine: VaeEngine, settings: Settings, metrics: Metrics) -> None:
        self.engine = engine
        self.timeout_s = settings.request_timeout_s
        self._batchers: dict[str, MicroBatcher] = {}
        if settings.batching:
            for endpoint, run in (
                ("/elbo", engine.elbo_batch), ("/encode", engine.encode_batch), ("/decode", engine.decode_batch)
            ):
                self._batchers[endpoint] = MicroBatcher(
                    run, settings.max_batch_size, settings.max_batch_delay_ms / 1000.0, _observer(metrics, endpoint)
                )

    async def _run(self, endpoint: str, run_one: Callable[[list[Any]], list[Any]], item: Any, size: int,
                   state: dict | None) -> Any:
        batcher = self._batchers.get(endpoint)
        work = batcher.submit(item, size, state) if batcher else run_in_threadpool(lambda: run_one([item])[0])
        if batcher is None and state is not None:
            state["batch_size"] = size
        return await self._within_timeout(work)

    async def _within_timeout(self, work) -> Any:
        try:
            async with asyncio.timeout(self.timeout_s):  # no extra task, unlike wait_for
                return await work
        except TimeoutError:
            raise Timeout(f"the request did not finish within {self.timeout_s:g} s (VAE_REQUEST_TIMEOUT_S)") from None

    async def elbo(self, request: PreparedElbo, state: dict | None = None) -> Scored:
        return await self._run("/elbo", self.engine.elbo_batch, request, len(request.x), state)

    async def encode(self, x_model: np.ndarray, state: dict | None = None) -> Encoded:
        return await self._run("/encode", self.engine.encode_batch, x_model, len(x_model), state)

    async def decode(self, z: np.ndarray, state: dict | None = None) -> np.ndarray:
        return await self._run("/decode", self.engine.decode_batch, z, len(z), state)

    async def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Unbatched work (sampling, heatmaps) in the thread pool, under the same timeout."""
        return await self._within_timeout(run_in_threadpool(fn, *args, **kwargs))

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()


def _observer(metrics: Metrics, endpoint: str):
    def observe(requests: int, instances: int, waits: list[float]) -> None:
        metrics.batch_requests.labels(endpoint).observe(requests)
        metrics.batch_size.labels(endpoint).observe(instances)
        for wait in waits:
            metrics.queue_wait.labels(endpoint).observe(wait)

    return observe
