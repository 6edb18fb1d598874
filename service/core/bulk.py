"""`vae score`: score a file larger than memory, chunk by chunk, with the code behind POST /elbo.

Rows come from .npy (memory-mapped, each chunk's pages released once scored), .csv (a chunk of lines at a
time) or .parquet (a batch of a row group at a time); answers go to .csv, .npy or .parquet, by suffix
(service/core/bulk_io.py). Memory stays bounded by the chunk size, whatever the file's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from service.core.artifact import load_artifact
from service.core.bulk_io import FIELDS, BulkError, open_writer, read_chunks
from service.core.engine import PER_INPUT_OUTPUTS, ElboOptions, Scored, VaeEngine
from service.core.errors import ServiceError
from service.core.runtime import load_runtime

__all__ = ["FIELDS", "BulkError", "DEFAULT_CHUNK_ROWS", "answer_columns", "score_file"]

# Rows per /elbo-sized step. Larger chunks spread the per-call costs (one encoder call, the numpy maths, one
# write) over more rows; the scorer graph's draws are still cut into scoring.DECODE_CHUNK_ROWS pieces.
DEFAULT_CHUNK_ROWS = 4096


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
) -> int:
    """Write one row per input row with /elbo's fields to `out` (.csv, .npy or .parquet); returns the rows scored.

    Chunk i is scored as an /elbo request with those rows and seed + i would be. `columns` picks a Parquet
    input's feature columns by name, in that order.
    """
    artifact = load_artifact(model_dir)
    engine = VaeEngine(artifact.manifest, load_runtime(artifact, runtime))
    data, out = Path(data), Path(out)
    total, chunks = read_chunks(data, artifact.manifest.n_features, chunk_rows, columns)
    writer = open_writer(out)
    scored_rows, finished = 0, False
    try:
        with tqdm(total=total, unit="row", disable=not progress, desc="score") as bar:
            for i, chunk in enumerate(chunks):
                options = ElboOptions(n_samples=n_samples, seed=seed + i, iw_samples=iw_samples)
                try:
                    scored = engine.elbo(chunk, options)
                except ServiceError as exc:
                    last = scored_rows + len(chunk) - 1
                    raise BulkError(f"{data}: rows {scored_rows}–{last}: {exc.message}") from None
                writer.write(answer_columns(scored, scored_rows))
                scored_rows += len(chunk)
                bar.update(len(chunk))
        finished = True
    finally:
        writer.close()
        if not finished:
            out.unlink(missing_ok=True)  # a half-written answer file must not look like a whole one
    return scored_rows
