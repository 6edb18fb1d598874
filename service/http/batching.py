"""Dynamic micro-batching: concurrent requests to one endpoint share one runtime call.

One worker task per endpoint takes whatever is queued the moment the runtime is free (up to
max_batch_size instances) and runs it in a thread. A lone request therefore runs at once, with no
fixed delay, while under load requests pile up during each call and go together into the next one.
max_batch_delay_ms > 0 additionally waits that long for more requests before a call that is not full.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi.concurrency import run_in_threadpool


@dataclass
class _Pending:
    item: Any
    size: int  # instances: what max_batch_size counts
    future: asyncio.Future
    state: dict | None  # the request's state: gets "batch_size", the instances in its runtime call
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """submit(item, size) -> result of run_batch([... item ...]) for that item, errors included.

    run_batch(items) returns one result per item. If it raises, every item is run alone, so one bad
    item fails only its own request.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Any]], list[Any]],
        max_batch_size: int,
        max_delay_s: float,
        on_batch: Callable[[int, int, list[float]], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._max = max_batch_size
        self._delay = max_delay_s
        self._on_batch = on_batch  # (requests, instances, queue waits in seconds)
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._carry: _Pending | None = None  # taken but did not fit: first in the next batch
        self._worker: asyncio.Task | None = None

    async def submit(self, item: Any, size: int, state: dict | None = None) -> Any:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())
        pending = _Pending(item, size, asyncio.get_running_loop().create_future(), state)
        await self._queue.put(pending)
        return await pending.future

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()

    async def _take(self) -> list[_Pending]:
        first, self._carry = self._carry, None
        batch = [first if first is not None else await self._queue.get()]
        total = batch[0].size
        deadline = time.perf_counter() + self._delay
        while total < self._max:
            try:
                nxt = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if total + nxt.size > self._max:
                self._carry = nxt
                break
            batch.append(nxt)
            total += nxt.size
        return batch

    async def _work(self) -> None:
        while True:
            batch = [p for p in await self._take() if not p.future.done()]  # timed-out requests drop out
            if not batch:
                continue
            started = time.perf_counter()
            instances = sum(p.size for p in batch)
            for pending in batch:
                if pending.state is not None:
                    pending.state["batch_size"] = instances
            if self._on_batch is not None:
                self._on_batch(len(batch), instances, [started - p.queued_at for p in batch])
            results = await run_in_threadpool(self._run_isolated, [p.item for p in batch])
            for pending, result in zip(batch, results, strict=False):
                if pending.future.done():
                    continue
                if isinstance(result, BaseException):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)

    def _run_isolated(self, items: list[Any]) -> list[Any]:
        try:
            return self._run_batch(items)
        except Exception:
            if len(items) == 1:
                return [_error_of(self._run_batch, items[0])]
            return [_error_of(self._run_batch, item) for item in items]


def _error_of(run_batch, item):
    try:
        return run_batch([item])[0]
    except Exception as exc:  # handed to that request's future, rendered by the error handlers
        return exc
