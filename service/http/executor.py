"""Runs the engine's work off the event loop: through the micro-batchers when batching is on, within the
request's deadline either way. The routes await these methods; the engine stays synchronous.

A request's deadline (VAE_REQUEST_TIMEOUT_S from its arrival) covers everything done for it in the worker
pool: parsing its body, decoding its images, the inference and building a large answer. When it passes the
request gets its 503 at once, and the engine, which checks the same deadline between decoder chunks, stops
the work at the next chunk.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi.concurrency import run_in_threadpool

from service.core.engine import Deadline, Encoded, PreparedElbo, Scored, VaeEngine
from service.http.batching import MicroBatcher
from service.http.observability import Metrics
from service.http.settings import Settings

# A lone request whose runtime call is measured to take at most this long runs on the event loop
# (service/http/batching.py): two thread hops cost more than the call itself on small models.
INLINE_BUDGET_S = 0.001


def elbo_units(request: PreparedElbo, n_features: int) -> int:
    """An /elbo request's work for the inline budget: rows x draws; with feature scores, x the features too
    (they add a decoder pass and each feature's log-density in float64 for every draw), so such a request
    runs on the event loop only when it is tiny."""
    units = len(request.x) * (request.n_samples + request.iw_samples)
    return units * n_features if request.feature_scores else units


def _sharing_deadline(run_batch: Callable[..., list[Any]]) -> Callable[[list[tuple[Any, Deadline | None]]], list[Any]]:
    """run_batch over (item, deadline) pairs: a batch's work stops only once every request in it has given up."""
    return lambda pairs: run_batch([item for item, _ in pairs], Deadline.latest(d for _, d in pairs))


class Executor:
    def __init__(self, engine: VaeEngine, settings: Settings, metrics: Metrics) -> None:
        self.engine = engine
        self.timeout_s = settings.request_timeout_s
        self._batchers: dict[str, MicroBatcher] = {}
        if settings.batching:
            for endpoint, run in (
                ("/elbo", engine.elbo_batch),
                ("/encode", engine.encode_batch),
                ("/decode", engine.decode_batch),
            ):
                self._batchers[endpoint] = MicroBatcher(
                    _sharing_deadline(run),
                    settings.max_batch_size,
                    settings.max_batch_delay_ms / 1000.0,
                    functools.partial(metrics.observe_batch, endpoint),
                    INLINE_BUDGET_S,
                )

    def deadline(self) -> Deadline:
        """A new request's deadline: VAE_REQUEST_TIMEOUT_S from now."""
        return Deadline.after(self.timeout_s)

    async def _run(
        self,
        endpoint: str,
        run_one: Callable[..., list[Any]],
        item: Any,
        size: int,
        state: dict | None,
        deadline: Deadline | None,
        units: int | None = None,
    ) -> Any:
        deadline = deadline or self.deadline()
        batcher = self._batchers.get(endpoint)
        if batcher is None:
            if state is not None:
                state["batch_size"] = size
            return await self._within(run_in_threadpool(lambda: run_one([item], deadline)[0]), deadline)
        ran, result = batcher.run_now((item, deadline), size, state, units)
        if ran:  # alone and cheap: done in this turn of the loop
            if isinstance(result, BaseException):
                raise result
            return result
        # The batcher fails the future at the deadline (a timer, armed only if the request waits; cheaper than
        # asyncio.timeout around the await), and drops a request whose future is done before it joins a batch.
        return await batcher.enqueue((item, deadline), size, state, units, deadline)

    async def _within(self, work, deadline: Deadline) -> Any:
        try:
            async with asyncio.timeout(deadline.remaining()):  # no extra task, unlike wait_for
                return await work
        except TimeoutError:
            raise deadline.error() from None

    async def elbo(self, request: PreparedElbo, state: dict | None = None, deadline: Deadline | None = None) -> Scored:
        units = elbo_units(request, self.engine.manifest.n_features)
        return await self._run("/elbo", self.engine.elbo_batch, request, len(request.x), state, deadline, units)

    async def encode(self, x_model: np.ndarray, state: dict | None = None, deadline: Deadline | None = None) -> Encoded:
        return await self._run("/encode", self.engine.encode_batch, x_model, len(x_model), state, deadline)

    async def decode(self, z: np.ndarray, state: dict | None = None, deadline: Deadline | None = None) -> np.ndarray:
        return await self._run("/decode", self.engine.decode_batch, z, len(z), state, deadline)

    async def call(self, fn: Callable, *args: Any, deadline: Deadline | None = None, **kwargs: Any) -> Any:
        """fn(*args, **kwargs) in the thread pool, awaited until the deadline (a new one when not given): unbatched
        work (sampling, heatmaps), parsing large bodies, decoding images, building large answers. Work that
        should stop at the deadline takes it among its own arguments."""
        return await self._within(run_in_threadpool(fn, *args, **kwargs), deadline or self.deadline())

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()
