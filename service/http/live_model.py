"""The model being served, and replacing it without downtime (POST /v1/model/reload, SIGHUP).

A LiveModel is one loaded version: its artifact, engine and executor, and a count of the requests it is
answering. Each request takes the current LiveModel once (service/http/api/deps.py) and keeps it to the end,
so it is answered by exactly one version. A reload loads and verifies the new version beside the old,
then swaps `ModelHost.current` in one assignment; the old version finishes its requests and then closes.
Knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from dataclasses import dataclass, field

from fastapi.concurrency import run_in_threadpool

from service.core.artifact import (
    MANIFEST_NAME,
    PARITY_TOLERANCE,
    Artifact,
    ArtifactError,
    load_artifact,
    manifest_version,
)
from service.core.engine import VaeEngine
from service.core.errors import ServiceError
from service.core.runtime import Runtime, load_runtime
from service.http.executor import Executor
from service.http.observability import Metrics
from service.http.settings import Settings

log = logging.getLogger("vae.service")


class ReloadFailed(ServiceError):
    """The model directory could not replace the model being served, which goes on serving."""

    status_code = 409
    code = "reload_failed"


def model_version(artifact: Artifact) -> str:
    """The served directory's manifest_version: every new export gives a new one. (A file changed by hand after
    export changes no version: the service checks the graphs it loads, load_artifact, and reads no other file.)"""
    return manifest_version(artifact.dir)


def check_parity(artifact: Artifact, runtime: str) -> None:
    """The export's own measurement of the graphs against the eager model, for the runtime to be served."""
    measured = artifact.manifest.parity.get(runtime)
    where = artifact.dir / MANIFEST_NAME
    if not measured:
        raise ArtifactError(f"{where} records no export parity for the {runtime} runtime")
    for graph, error in measured.items():
        if not (math.isfinite(error) and error <= PARITY_TOLERANCE):
            raise ArtifactError(
                f"{where}: the {runtime} {graph} differs from the eager model by {error:.3g} > {PARITY_TOLERANCE:g}"
            )


@dataclass(eq=False)
class LiveModel:
    artifact: Artifact
    engine: VaeEngine
    executor: Executor
    version: str
    in_flight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def acquire(self) -> LiveModel:
        """Counts a request in; the middleware calls release() when its response is done."""
        self.in_flight += 1
        self._idle.clear()
        return self

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def retire(self, grace_s: float) -> None:
        """Close the executor once the requests in flight have finished (or after grace_s, when they time out)."""
        if self.in_flight:
            try:
                async with asyncio.timeout(grace_s):
                    await self._idle.wait()
            except TimeoutError:
                log.warning("model %s retired with %d requests still running", self.version, self.in_flight)
        await self.executor.close()


def load_live(
    settings: Settings, metrics: Metrics, artifact: Artifact | None = None, runtime: Runtime | None = None
) -> LiveModel:
    """Load, verify and warm up a model directory (blocking: call it in a thread). Raises on any failure.

    Verified: the sha256 of each graph file the runtime loads (load_artifact), the export parity recorded in the
    manifest for this runtime, and one real inference through both graphs with finite results.
    """
    runtime_name = runtime.name if runtime is not None else settings.runtime
    artifact = artifact or load_artifact(settings.model_dir, runtime=runtime_name)
    check_parity(artifact, runtime_name)
    loaded = runtime or load_runtime(artifact, settings.runtime, settings.runtime_threads, settings.onnx_spinning)
    engine = VaeEngine(artifact.manifest, loaded, settings.limits, settings.threshold)
    engine.warm_up()
    return LiveModel(artifact, engine, Executor(engine, settings, metrics), model_version(artifact))


def freeze_long_lived() -> None:
    """Move every object alive now (the app, its routes and schemas, the libraries, the model) out of the
    garbage collector's reach (gc.freeze), after collecting what an earlier call had frozen and is garbage now.

    Called once the service has started, and after a reload once the old version has retired. A full
    collection walks every tracked object, and a started service has hundreds of thousands that live as long
    as it does: in process, at c=64, one full collection every ~30,000 requests held the event loop (and
    every request in flight) for 34-37 ms, which lands in every p99; with them frozen, none ran in the same
    32,000 requests (docs/benchmark-serving.md). Objects made later are collected as usual.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ModelHost:
    """Holds the LiveModel being served and replaces it on reload, one reload at a time."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.current: LiveModel | None = None
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task] = set()  # held here, or the event loop may drop them unfinished

    async def start(self, artifact: Artifact | None = None, runtime: Runtime | None = None) -> LiveModel:
        live = await run_in_threadpool(load_live, self.settings, self.metrics, artifact, runtime)
        self._go_live(live)
        return live

    async def reload(self) -> dict:
        """Load settings.model_dir again and swap it in; on any failure keep serving the old version."""
        if self.settings.workers > 1:
            # Each worker is a process with a model of its own; an HTTP request reaches only one of them.
            raise ReloadFailed(
                f"this service runs {self.settings.workers} worker processes and a request reaches only one: "
                "send SIGHUP to the `vae serve` parent process instead, which replaces the workers one at a time"
            )
        async with self._lock:
            previous = self.current
            started = time.perf_counter()
            try:
                live = await run_in_threadpool(load_live, self.settings, self.metrics)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ArtifactError) else str(exc)
                self.metrics.reloads.labels("failed").inc()
                kept = previous.version if previous else None
                log.error("model reload from %s failed; still serving %s: %s", self.settings.model_dir, kept, reason)
                raise ReloadFailed(f"the reload failed and version {kept} goes on serving: {reason}") from None
            self._go_live(live)
            seconds = time.perf_counter() - started
            self.metrics.reloads.labels("ok").inc()
            log.info(
                "model reloaded from %s: version %s replaces %s in %.2f s",
                self.settings.model_dir,
                live.version,
                previous.version if previous else None,
                seconds,
            )
            if previous is not None:
                self._in_background(self._retire(previous))
            return {
                "status": "reloaded",
                "version": live.version,
                "previous_version": previous.version if previous else None,
                "seconds": round(seconds, 3),
            }

    async def _retire(self, previous: LiveModel) -> None:
        await previous.retire(self.settings.request_timeout_s + 5)
        freeze_long_lived()  # the retired version's objects, frozen with the rest at startup, can go now

    def reload_soon(self) -> None:
        """Start a reload and return at once (SIGHUP); a failure is logged and counted by reload()."""

        async def reload() -> None:
            try:
                await self.reload()
            except ReloadFailed:
                pass  # the old version goes on serving

        self._in_background(reload())

    def _in_background(self, work) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _go_live(self, live: LiveModel) -> None:
        self.current = live  # one assignment: a request sees the old version or the new, never a mix
        manifest = live.artifact.manifest
        self.metrics.set_model(manifest.name, live.version, str(manifest.format_version), live.engine.runtime.name)

    async def close(self) -> None:
        live, self.current = self.current, None
        if live is not None:
            await live.executor.close()
        for task in list(self._background):
            await task
