"""`vae score`: score a file larger than memory, chunk by chunk, with the code behind POST /elbo.

.npy files are memory-mapped and each chunk's pages are released once scored; CSV files are read a
chunk of lines at a time. Memory stays bounded by the chunk size, whatever the file's size.
"""

from __future__ import annotations

import csv
import mmap
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from service.core.artifact import load_artifact
from service.core.engine import PER_INPUT_OUTPUTS, ElboOptions, VaeEngine
from service.core.errors import ServiceError
from service.core.runtime import load_runtime

# The CSV's columns: the row, then /elbo's per-input fields.
FIELDS = ["row", *(o.name for o in PER_INPUT_OUTPUTS)]


def _column(values: np.ndarray, dtype: type) -> list[Any]:
    """One CSV column: booleans as true/false, numbers as Python floats (csv writes them with repr, losslessly)."""
    return np.where(values, "true", "false").tolist() if dtype is bool else values.tolist()


class BulkError(ValueError):
    """A file that cannot be scored; the message names it and the problem."""


def _npy_chunks(path: Path, n_features: int, chunk_rows: int) -> tuple[int, Iterator[np.ndarray]]:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise BulkError(f"{path}: not a readable .npy array ({exc})") from None
    if array.ndim < 2 or int(np.prod(array.shape[1:])) != n_features:
        raise BulkError(f"{path}: rows are shaped {list(array.shape[1:])}; the model takes {n_features} features")

    def chunks():
        for start in range(0, len(array), chunk_rows):
            chunk = np.asarray(array[start : start + chunk_rows], dtype=np.float64).reshape(-1, n_features)
            yield chunk
            _release(array, start, len(chunk))

    return len(array), chunks()


def _release(array: np.memmap, start: int, rows: int) -> None:
    """Drop a scored chunk's pages from this process's memory (they stay in the page cache)."""
    mapped = getattr(array, "_mmap", None)
    if mapped is None or not hasattr(mapped, "madvise"):
        return
    row_bytes = array.strides[0]
    begin = array.offset + start * row_bytes
    page = mmap.PAGESIZE
    aligned = begin - begin % page
    mapped.madvise(mmap.MADV_DONTNEED, aligned, begin + rows * row_bytes - aligned)


def _csv_chunks(path: Path, n_features: int, chunk_rows: int) -> tuple[int | None, Iterator[np.ndarray]]:
    def chunks():
        with path.open(newline="") as f:
            reader = csv.reader(f)
            first = next(reader, None)
            if first is None:
                raise BulkError(f"{path}: the file is empty")
            pending = [] if _is_header(first) else [first]
            line = 1
            while True:
                rows = pending + list(islice(reader, chunk_rows - len(pending)))
                pending = []
                if not rows:
                    return
                try:
                    chunk = np.asarray(rows, dtype=np.float64)
                except ValueError:
                    raise BulkError(
                        f"{path}: lines {line}–{line + len(rows) - 1} hold a non-numeric or missing value"
                    ) from None
                if chunk.ndim != 2 or chunk.shape[1] != n_features:
                    raise BulkError(f"{path}: line {line} has {len(rows[0])} fields; the model takes {n_features}")
                line += len(rows)
                yield chunk

    return None, chunks()


def _is_header(fields: list[str]) -> bool:
    try:
        [float(v) for v in fields]
    except ValueError:
        return True
    return False


def score_file(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    iw_samples: int | None = None,
    n_samples: int = 1,
    seed: int = 0,
    chunk_rows: int = 1024,
    runtime: str = "onnx",
    progress: bool = True,
) -> int:
    """Write one CSV line per input row with /elbo's fields; returns the number of rows scored.

    Chunk i is scored as an /elbo request with those rows and seed + i would be.
    """
    artifact = load_artifact(model_dir)
    engine = VaeEngine(artifact.manifest, load_runtime(artifact, runtime))
    data, out = Path(data), Path(out)
    if not data.is_file():
        raise BulkError(f"{data}: no such file")
    reader = {".npy": _npy_chunks, ".csv": _csv_chunks}.get(data.suffix.lower())
    if reader is None:
        raise BulkError(f"{data}: expected a .npy or .csv file")
    total, chunks = reader(data, artifact.manifest.n_features, chunk_rows)
    scored_rows = 0
    with out.open("w", newline="") as f, tqdm(total=total, unit="row", disable=not progress, desc="score") as bar:
        writer = csv.writer(f)
        writer.writerow(FIELDS)
        for i, chunk in enumerate(chunks):
            try:
                scored = engine.elbo(chunk, ElboOptions(n_samples=n_samples, seed=seed + i, iw_samples=iw_samples))
            except ServiceError as exc:
                raise BulkError(f"{data}: rows {scored_rows}–{scored_rows + len(chunk) - 1}: {exc.message}") from None
            columns = [_column(scored.value(o.name), o.dtype) for o in PER_INPUT_OUTPUTS]
            writer.writerows(zip(range(scored_rows, scored_rows + len(chunk)), *columns, strict=False))
            scored_rows += len(chunk)
            bar.update(len(chunk))
    return scored_rows
