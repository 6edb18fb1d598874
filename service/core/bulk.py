"""`vae score`: score a file larger than memory, chunk by chunk, with the code behind POST /elbo.

Rows come from .npy (memory-mapped, each chunk's pages released once scored), .csv (a chunk of lines at a
time) or .parquet (a batch of a row group at a time); answers go to .csv, .npy or .parquet, by suffix
(service/core/bulk_io.py). Memory stays bounded by the chunk size, whatever the file's size: at most
streams + 1 chunks are held, the ones being scored (two at once where there are two cores: default_streams)
and the one being read.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from service.core.artifact import load_artifact
from service.core.bulk_io import FIELDS, BulkError, open_writer, read_chunks
from service.core.engine import PER_INPUT_OUTPUTS, ElboOptions, Scored, VaeEngine
from service.core.errors import ServiceError
from service.core.progress import progress_bar
from service.core.runtime import available_cores, load_runtime

__all__ = ["FIELDS", "BulkError", "DEFAULT_CHUNK_ROWS", "answer_columns", "score_file", "stream_threads"]

# Rows per /elbo-sized step. Larger chunks spread the per-call costs (one encoder call, the numpy maths, one
# write) over more rows; the graphs' draws are still cut into the runtime's call_rows pieces.
DEFAULT_CHUNK_ROWS = 4096


def default_streams() -> int:
    """Chunks scored at once: two where there are two cores or more.

    One at a time, a chunk is read, scored and written in score_file's own thread, as before 2026-11-27. Two at
    once, they are scored in a pool while that thread reads the next chunk and writes what is done: one chunk's
    numpy work (its noise, the bounds, the decisions) runs beside the other's runtime call, and each stream's
    runtime calls run on threads of their own (stream_threads). On the digits model that scored 20-50% more rows
    per second than one at a time (docs/benchmark-serving.md, "Bulk scoring"). Timing both ways on the file's first
    chunks and keeping the faster was tried and dropped: on this shared machine the few chunks it could afford to
    time chose wrongly both ways."""
    return 2 if available_cores() >= 2 else 1


def stream_threads(streams: int, total_rows: int | None, chunk_rows: int) -> int:
    """ONNX Runtime's threads for `streams` chunks at once: the cores shared out between the streams, so that each
    stream's calls run on threads of their own (and are cut to the one-thread runtime's smaller calls:
    OnnxRuntime.call_rows); every core (0) when only one chunk runs at a time, or the file is known to be one chunk
    (a CSV's rows are not counted up front). TorchScript's threads are the whole process's (torch.set_num_threads),
    so score_file leaves them alone.

    Until 2026-11-27 two streams shared a runtime with every core: their calls then contended for its thread pool,
    and a model whose networks dominate the work (784-1024-512) ran 6-9% slower than one chunk at a time. With a
    thread each, and calls of ONE_THREAD_CALL_ROWS draws, that model ran 33% faster and digits 21-23% faster at
    K = 1, 13% at K = 100 (docs/benchmark-serving.md, "Bulk scoring")."""
    if streams <= 1 or (total_rows is not None and total_rows <= chunk_rows):
        return 0
    return max(1, available_cores() // streams)


def _finished(fn: Callable[..., Scored], *args: Any) -> Future[Scored]:
    """fn(*args), run now in this thread, as a done future."""
    future: Future[Scored] = Future()
    try:
        future.set_result(fn(*args))
    except Exception as exc:  # raised where the pool's future would raise it: when its answers are written
        future.set_exception(exc)
    return future


def answer_columns(scored: Scored, first_row: int) -> list[np.ndarray]:
    """One chunk's answers as columns, in FIELDS order: the row number, then /elbo's per-input fields."""
    rows = np.arange(first_row, first_row + len(scored.elbo), dtype=np.int64)
    return [rows, *(np.asarray(scored.value(o.name)) for o in PER_INPUT_OUTPUTS)]


def score_file(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    iw_samples: int | None = None,
    n_samples: int | None = None,
    seed: int = 0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    runtime: str = "onnx",
    columns: Sequence[str] | None = None,
    progress: bool = True,
    streams: int | None = None,
) -> int:
    """Write one row per input row with /elbo's fields to `out` (.csv, .npy or .parquet); returns the rows scored.

    Chunk i is scored as an /elbo request with those rows and seed + i would be, so the answers are the same
    whatever `streams` (chunks scored at once, in threads; default_streams() when None) or the order the chunks
    finish in: they are written in order. `columns` picks a Parquet input's feature columns by name, in that
    order. Memory holds at most streams + 1 chunks: those being scored and the one being read. The answers go
    into a hidden file beside `out` (`.NAME.partial-PID`), renamed to `out` once every row is written: a run
    that fails, at any chunk, leaves no partial answers and whatever `out` held before.
    """
    streams = default_streams() if streams is None else streams
    artifact = load_artifact(model_dir, runtime=runtime)
    data, out = Path(data), Path(out)
    total, chunks = read_chunks(data, artifact.manifest.n_features, chunk_rows, columns, in_use=streams)
    threads = stream_threads(streams, total, chunk_rows) if runtime == "onnx" else 0
    engine = VaeEngine(artifact.manifest, load_runtime(artifact, runtime, threads=threads, lazy=True))
    # Written beside `out` and renamed into place once whole: a run that fails leaves `out` as it was.
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    writer = open_writer(out, into=partial)
    scoring: deque[tuple[int, int, Future[Scored]]] = deque()  # (first row, rows, its answers), in file order
    read_rows, finished = 0, False

    def score(i: int, chunk: np.ndarray, first_row: int) -> Scored:
        options = ElboOptions(n_samples=n_samples, seed=seed + i, iw_samples=iw_samples)
        try:
            return engine.elbo(chunk, options)
        except ServiceError as exc:
            raise BulkError(f"{data}: rows {first_row}–{first_row + len(chunk) - 1}: {exc.message}") from None

    pool = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="vae-score")
    try:
        with progress_bar(total, progress) as bar:

            def write_oldest() -> None:
                first_row, rows, answers = scoring.popleft()
                writer.write(answer_columns(answers.result(), first_row))
                bar.update(rows)

            for i, chunk in enumerate(chunks):
                while len(scoring) >= streams:
                    write_oldest()
                if streams == 1:  # here, as before 2026-11-27: read, scored and written in turn, nothing beside it
                    answers = _finished(score, i, chunk, read_rows)
                else:  # in the pool, while this thread reads the next chunk and writes what is done
                    answers = pool.submit(score, i, chunk, read_rows)
                scoring.append((read_rows, len(chunk), answers))
                read_rows += len(chunk)
            while scoring:
                write_oldest()
        finished = True
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        try:
            writer.close()
            if finished:
                os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)  # renamed already, or a run that failed: nothing half-written is left
    return read_rows  # all of them scored and written
