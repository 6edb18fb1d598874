"""Dynamic micro-batching: concurrent requests to one endpoint share one runtime call.

One worker thread per endpoint runs the batches (those cheap enough run on the event loop: below). Whatever
is queued the moment it is free (up to max_batch_size instances) goes into its next call, so a lone request
runs at once, with no fixed delay, while under load requests pile up during each call and go together into
the next one.
max_batch_delay_ms > 0 additionally waits that long for more requests before a call that is not full.

The batches are formed on the event loop, at the end of the turn in which requests arrived or a call
finished, and handed to the thread whole; the thread hands each batch's results back with one
call_soon_threadsafe. Per request that is one future and one list append on the event loop.

A batch whose work is cheap runs on the event loop itself (inline_budget_s): handing it to the thread and
back costs two thread wake-ups and the GIL's hand-overs, about 50 µs of CPU for a lone request on the digits
model, more than its whole runtime call, and under load 12-22 µs of CPU per request (docs/benchmark-serving.md).
"Cheap" is judged from measured costs: the batcher keeps the seconds per unit of work (instances x draws) of its
recent calls, and runs a batch inline only when that rate times the batch's units is within the budget, so the
event loop is held for about the budget at most, not for a request that asks for thousands of draws or a model
that takes milliseconds per instance. While it runs, requests arriving wait in the sockets' buffers, and go
together into the next batch, as they would have while the thread ran. Until 2026-11-26 only a lone request
after a lone request ran inline, so that the loop could read the requests behind a batch while the thread ran
it; measured under wrk, running every cheap batch inline served 9-13% more requests at 16 and 64 connections
with 15-18% less CPU per request.

A request that comes alone, when the last calls were lone too (not under load), does not even queue:
run_now runs it in its own task's turn of the loop, without the turn the batch would wait for, its future and
its deadline's timer (in process 131 -> 116 µs of CPU per request at c=1; under wrk +8.5% requests per second).
The design
it replaced, an asyncio worker task over an asyncio.Queue that ran each batch through the thread pool,
cost a task switch per request and a thread-pool round trip per batch (docs/benchmark-serving.md, "What
each change gained"); a thread that took requests from a queue.SimpleQueue itself woke on the first one
and ran batches of one or two while the event loop still held the rest.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class Expiring(Protocol):
    """When a queued request gives up (service/core/engine.py's Deadline)."""

    def remaining(self) -> float: ...

    def error(self) -> Exception: ...


@dataclass(slots=True)  # one per queued request
class _Pending:
    item: Any
    size: int  # instances: what max_batch_size counts
    future: asyncio.Future
    state: dict | None  # the request's state: gets "batch_size", the instances in its runtime call
    units: int  # its work (instances x draws): what the inline budget counts
    deadline: Expiring | None = None
    timer: asyncio.TimerHandle | None = None  # fails the future at the deadline, once armed (_arm)
    queued_at: float = field(default_factory=time.perf_counter)


_STOP = object()  # put on the thread's queue by close(): the worker thread ends
LONE_CALLS = 2  # lone calls in a row after which a lone request runs at once (MicroBatcher.run_now)


class MicroBatcher:
    """submit(item, size) -> result of run_batch([... item ...]) for that item, errors included.

    run_batch(items) returns one result per item. If it raises, every item is run alone, so one bad
    item fails only its own request. run_batch and on_batch run in the batcher's own thread.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Any]], list[Any]],
        max_batch_size: int,
        max_delay_s: float,
        on_batch: Callable[[int, int, list[float]], None] | None = None,
        inline_budget_s: float = 0.0,
    ) -> None:
        self._run_batch = run_batch
        self._max = max_batch_size
        self._delay = max_delay_s
        self._on_batch = on_batch  # (requests, instances, queue waits in seconds)
        self._inline_budget = inline_budget_s  # 0: every batch runs in the thread
        self._unit_seconds: float | None = None  # seconds per unit of work, averaged over recent calls
        self._lone_calls = 0  # calls in a row, up to the last, of one request each
        self._ran_now = False  # a request ran at once (run_now) in this turn of the loop
        self._waiting: list[_Pending] = []  # event loop only
        self._busy = False  # a batch is in the worker thread (event loop only)
        self._dispatch_due = False
        self._batches: queue.SimpleQueue[Any] = queue.SimpleQueue()  # to the worker thread
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit(self, item: Any, size: int, state: dict | None = None, units: int | None = None) -> Any:
        return await self.enqueue(item, size, state, units)

    def run_now(self, item: Any, size: int, state: dict | None = None, units: int | None = None) -> tuple[bool, Any]:
        """(True, the item's result or its error) when it ran at once, in the caller's own turn of the loop;
        (False, None) when it must queue (enqueue). It runs at once only when nothing waits or runs, the last
        LONE_CALLS calls were of one request each and no other request ran at once in this turn of the loop (not
        under load, when requests arriving in the same turn should share a call), and its measured cost fits
        the inline budget: a lone request then skips a turn of the loop, its future and its deadline's timer.

        Under load the calls alternate between many requests and one (the first of the next wave, read alone
        from its socket: 40% of the calls at 64 connections under wrk), which is why one lone call is not
        enough: after it, the first request of the next wave would run alone, and the rest of it apart."""
        if (
            self._busy
            or self._waiting
            or self._dispatch_due
            or self._ran_now
            or self._lone_calls < LONE_CALLS
            or not self._cheap_units(size if units is None else units)
        ):
            return False, None
        self._ran_now = True  # the next request in this turn queues, and goes with the others of the turn
        asyncio.get_running_loop().call_soon(self._new_turn)
        pending = _Pending(item, size, None, state, size if units is None else units)  # type: ignore[arg-type]
        self._busy = True
        try:
            return True, self._run_guarded([pending])[0]
        finally:
            self._busy = False

    def _new_turn(self) -> None:
        self._ran_now = False

    def enqueue(
        self,
        item: Any,
        size: int,
        state: dict | None = None,
        units: int | None = None,
        deadline: Expiring | None = None,
    ) -> asyncio.Future:
        """The future of the item's result (on the running event loop); done early, it drops out. `units` is its
        work for the inline budget (instances x draws; `size` when not given). At `deadline` the future fails with
        deadline.error(), unless the request ran on the event loop in the turn it arrived in: its timer is armed
        only when it waits longer or goes to the thread (a timer made and cancelled for every request cost about
        1.5 µs of the event loop's time)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # the first request, or (in tests) a new event loop
            self._loop, self._busy, self._waiting, self._dispatch_due, self._ran_now = loop, False, [], False, False
        future = loop.create_future()
        pending = _Pending(item, size, future, state, size if units is None else units, deadline)
        self._waiting.append(pending)
        if self._busy:  # behind a call in the thread: it waits
            _arm(pending, loop)
        if not self._dispatch_due and not self._busy:
            self._dispatch_due = True
            loop.call_soon(self._dispatch)  # after this turn of the loop: every request that arrived in it
        elif self._delay > 0 and not self._busy and sum(p.size for p in self._waiting) >= self._max:
            loop.call_soon(self._dispatch)  # full: no reason to wait out the delay
        return future

    async def close(self) -> None:
        """Stop the worker thread after the batch it is running (requests still waiting are dropped)."""
        if self._thread is not None:
            self._batches.put(_STOP)
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    def _dispatch(self) -> None:
        """On the event loop, when the thread is free: the next batch to it."""
        self._dispatch_due = False
        if self._busy:
            return
        if any(p.future.done() for p in self._waiting):  # timed out or given up: they drop out
            for gone in (p for p in self._waiting if p.future.done()):
                _disarm(gone)
            self._waiting = [p for p in self._waiting if not p.future.done()]
        if not self._waiting:
            return
        batch, total = [], 0
        for pending in self._waiting:
            if batch and total + pending.size > self._max:
                break
            batch.append(pending)
            total += pending.size
        if self._delay > 0 and total < self._max and len(batch) == len(self._waiting):
            wait = self._waiting[0].queued_at + self._delay - time.perf_counter()
            if wait > 0:  # not full, and the first request may wait a little longer for company
                assert self._loop is not None
                self._dispatch_due = True
                self._loop.call_later(wait, self._dispatch)
                for pending in self._waiting:
                    _arm(pending, self._loop)
                return
        del self._waiting[: len(batch)]
        self._busy = True
        assert self._loop is not None
        for pending in self._waiting:  # left for a later call
            _arm(pending, self._loop)
        if self._cheap(batch):
            self._finished(batch, self._run_guarded(batch), inline=True)  # here, without two thread hops
            return
        for pending in batch:
            _arm(pending, self._loop)
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="vae-batcher", daemon=True)
            self._thread.start()
        self._batches.put((batch, self._loop))

    def _finished(self, batch: list[_Pending], results: list[Any], inline: bool = False) -> None:
        """On the event loop: every request of a batch gets its result at once, and the next batch goes (after
        this turn when this one ran inline: the loop gets to its sockets between batches, and a long queue is
        not run in one deep chain of calls)."""
        self._busy = False
        for pending, result in zip(batch, results, strict=False):
            _disarm(pending)
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
        if not self._waiting:
            return
        if not inline:
            self._dispatch()
        elif not self._dispatch_due:
            assert self._loop is not None
            self._dispatch_due = True
            self._loop.call_soon(self._dispatch)

    def _cheap(self, batch: list[_Pending]) -> bool:
        """Whether this batch may run inline: the measured cost of work says its call fits the inline budget."""
        return self._cheap_units(sum(p.units for p in batch))

    def _cheap_units(self, units: int) -> bool:
        rate = self._unit_seconds
        return self._inline_budget > 0 and rate is not None and rate * units <= self._inline_budget

    def _work(self) -> None:
        while (taken := self._batches.get()) is not _STOP:
            batch, loop = taken
            results = self._run_guarded(batch)
            try:
                loop.call_soon_threadsafe(self._finished, batch, results)
            except RuntimeError:  # that event loop has closed (a test's): nobody is waiting for these
                pass

    def _run_guarded(self, batch: list[_Pending]) -> list[Any]:
        """_run_timed, with anything it raises (on_batch's metrics, say; run_batch's own errors are isolated
        per item) as every request's result: the batcher must not be left busy with nobody to finish it."""
        try:
            return self._run_timed(batch)
        except Exception as exc:
            return [exc] * len(batch)

    def _run_timed(self, batch: list[_Pending]) -> list[Any]:
        """One runtime call for the batch (in the thread, or inline): its metrics, and the cost per unit it took."""
        started = time.perf_counter()
        instances = sum(p.size for p in batch)
        for pending in batch:
            if pending.state is not None:
                pending.state["batch_size"] = instances
        if self._on_batch is not None:
            self._on_batch(len(batch), instances, [started - p.queued_at for p in batch])
        results = self._run_isolated([p.item for p in batch])
        self._lone_calls = self._lone_calls + 1 if len(batch) == 1 else 0
        rate = (time.perf_counter() - started) / max(1, sum(p.units for p in batch))
        # A moving average: one slow call (a page fault, the machine busy) moves it a quarter of the way.
        self._unit_seconds = rate if self._unit_seconds is None else 0.75 * self._unit_seconds + 0.25 * rate
        return results

    def _run_isolated(self, items: list[Any]) -> list[Any]:
        try:
            return self._run_batch(items)
        except Exception as exc:
            if len(items) == 1:  # its own error: nothing to tell apart, and nothing to run again
                return [exc]
            return [_error_of(self._run_batch, item) for item in items]


def _arm(pending: _Pending, loop: asyncio.AbstractEventLoop) -> None:
    """The request's deadline timer, if it has a deadline and none yet."""
    deadline = pending.deadline
    if deadline is not None and pending.timer is None and not pending.future.done():
        pending.timer = loop.call_at(loop.time() + deadline.remaining(), _expire, pending.future, deadline)


def _disarm(pending: _Pending) -> None:
    if pending.timer is not None:
        pending.timer.cancel()
        pending.timer = None


def _expire(future: asyncio.Future, deadline: Expiring) -> None:
    if not future.done():
        future.set_exception(deadline.error())


def _error_of(run_batch, item):
    try:
        return run_batch([item])[0]
    except Exception as exc:  # handed to that request's future, rendered by the error handlers
        return exc
