"""The files `vae score` reads and writes, chosen by suffix: .npy, .csv and .parquet, in and out.

Readers yield (rows, D) float64 chunks of raw rows; writers take one chunk of answers at a time as columns
(the row number, then /elbo's per-input fields). Memory stays bounded by the chunk size either way.
"""

from __future__ import annotations

import csv
import mmap
import struct
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from service.core.engine import PER_INPUT_OUTPUTS

if TYPE_CHECKING:
    import pyarrow as pa

# pyarrow (and with it service/core/parquet_io.py) is imported only when a .csv or .parquet file is written or a
# .parquet file read: its libraries add ~50 MB to the resident memory of a .npy-to-.npy run.

# The answers' columns: the row, then /elbo's per-input fields, with the dtype each format stores.
FIELDS = ["row", *(o.name for o in PER_INPUT_OUTPUTS)]
DTYPES = [
    np.dtype(np.int64),
    *(np.dtype(np.bool_) if o.dtype is bool else np.dtype(np.float64) for o in PER_INPUT_OUTPUTS),
]
INPUT_SUFFIXES = (".npy", ".csv", ".parquet")
OUTPUT_SUFFIXES = (".csv", ".npy", ".parquet")


class BulkError(ValueError):
    """A file that cannot be scored; the message names it and the problem."""


# --- reading ----------------------------------------------------------------------------------------------------
def read_chunks(
    path: Path, n_features: int, chunk_rows: int, columns: Sequence[str] | None = None, in_use: int = 0
) -> tuple[int | None, Iterator[np.ndarray]]:
    """(total rows when known up front, chunks of raw rows) for a .npy, .csv or .parquet file. `in_use`: how many
    chunks the consumer may still be using when it asks for the next one, the last included (0: it is done with
    each before asking for the next). A .npy chunk may be a view of the memory-mapped file, whose pages are
    released once the consumer is done with them, so that a file larger than memory is not held in it."""
    if not path.is_file():
        raise BulkError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise BulkError(f"{path}: expected a .npy, .csv or .parquet file")
    if columns and suffix != ".parquet":
        raise BulkError(f"{path}: --columns picks columns of a Parquet file by name; this is a {suffix} file")
    if suffix == ".npy":
        return _npy_chunks(path, n_features, chunk_rows, in_use)
    if suffix == ".csv":
        return None, _csv_chunks(path, n_features, chunk_rows)
    return _parquet_chunks(path, n_features, chunk_rows, columns)


def _npy_chunks(path: Path, n_features: int, chunk_rows: int, in_use: int) -> tuple[int, Iterator[np.ndarray]]:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise BulkError(f"{path}: not a readable .npy array ({exc})") from None
    if array.ndim < 2 or int(np.prod(array.shape[1:])) != n_features:
        raise BulkError(f"{path}: rows are shaped {list(array.shape[1:])}; the model takes {n_features} features")

    def chunks() -> Iterator[np.ndarray]:
        # A view of the mapped pages when the file holds float64 rows, else a converted copy.
        for start in range(0, len(array), chunk_rows):
            chunk = np.asarray(array[start : start + chunk_rows], dtype=np.float64).reshape(-1, n_features)
            yield chunk
            done = start - in_use * chunk_rows  # asked for the next chunk, the consumer is done with this one
            if done >= 0:
                _release(array, done, min(chunk_rows, len(array) - done))

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


def _csv_chunks(path: Path, n_features: int, chunk_rows: int) -> Iterator[np.ndarray]:
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


def _is_header(fields: list[str]) -> bool:
    try:
        [float(v) for v in fields]
    except ValueError:
        return True
    return False


def _parquet_chunks(
    path: Path, n_features: int, chunk_rows: int, columns: Sequence[str] | None
) -> tuple[int, Iterator[np.ndarray]]:
    from service.core.parquet_io import ParquetInputError, numeric_columns, parquet_rows, read_parquet_chunks

    try:
        chosen = numeric_columns(path, columns)
        total = parquet_rows(path)
    except ParquetInputError as exc:
        raise BulkError(str(exc)) from None
    if len(chosen) != n_features:
        how = "--columns names" if columns else "it has"
        raise BulkError(
            f"{path}: {how} {len(chosen)} columns; the model takes {n_features} features (choose them with --columns)"
        )

    def chunks() -> Iterator[np.ndarray]:
        try:
            yield from read_parquet_chunks(path, chosen, chunk_rows)
        except ParquetInputError as exc:
            raise BulkError(str(exc)) from None

    return total, chunks()


# --- writing ----------------------------------------------------------------------------------------------------
class AnswerWriter(Protocol):
    def write(self, columns: list[np.ndarray]) -> None: ...  # one chunk: an array per FIELDS entry

    def close(self) -> None: ...


def open_writer(path: Path, into: Path | None = None) -> AnswerWriter:
    """The writer for the output file's suffix: .csv, .npy or .parquet; it writes into `into` when given (the
    file to be renamed to `path` once whole: bulk.score_file), and errors name `path`."""
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise BulkError(f"{path}: expected an output file ending .csv, .npy or .parquet")
    target = into or path
    try:
        if suffix == ".csv":
            return CsvWriter(target)
        if suffix == ".npy":
            return NpyWriter(target)
        return ParquetWriter(target)
    except OSError as exc:
        raise BulkError(f"{path}: cannot be written ({exc.strerror or exc})") from None


def _table(columns: list[np.ndarray]) -> pa.Table:
    import pyarrow as pa

    return pa.table(dict(zip(FIELDS, columns, strict=True)), schema=_schema())


def _schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([(name, pa.from_numpy_dtype(dtype)) for name, dtype in zip(FIELDS, DTYPES, strict=True)])


class CsvWriter:
    """A header line, then one line per row: booleans as true/false, floats in the shortest form that reads
    back to the same double (Arrow's writer, many times faster than the csv module's)."""

    def __init__(self, path: Path) -> None:
        import pyarrow.csv as pa_csv

        options = pa_csv.WriteOptions(quoting_style="needed", quoting_header="none")
        self._writer = pa_csv.CSVWriter(str(path), _schema(), write_options=options)

    def write(self, columns: list[np.ndarray]) -> None:
        self._writer.write_table(_table(columns))

    def close(self) -> None:
        self._writer.close()


class ParquetWriter:
    """One row group per chunk."""

    def __init__(self, path: Path) -> None:
        from service.core.parquet_io import ParquetTableWriter

        self._writer = ParquetTableWriter(path, _schema())

    def write(self, columns: list[np.ndarray]) -> None:
        self._writer.write(_table(columns))

    def close(self) -> None:
        self._writer.close()


class NpyWriter:
    """A 1-d structured array with a field per column (np.load(path)["anomaly_score"]), written a chunk at a
    time. The row count is unknown until the end, so the header is written with room for any count and
    rewritten, padded to the same length, on close."""

    DTYPE = np.dtype(list(zip(FIELDS, DTYPES, strict=True)))

    def __init__(self, path: Path) -> None:
        self._file = path.open("wb")
        self._rows = 0
        self._header_length = len(self._header(2**63 - 1))
        self._file.write(self._header(0, self._header_length))

    @classmethod
    def _header(cls, rows: int, length: int | None = None) -> bytes:
        """Format 1.0's magic, length and dict; padded with spaces so the data starts 64-byte aligned (or at
        `length`)."""
        text = repr({"descr": np.lib.format.dtype_to_descr(cls.DTYPE), "fortran_order": False, "shape": (rows,)})
        prefix = 10  # magic (6), version (2), header length (2)
        total = length if length is not None else -(-(prefix + len(text) + 1) // 64) * 64
        text = text.ljust(total - prefix - 1) + "\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")

    def write(self, columns: list[np.ndarray]) -> None:
        records = np.empty(len(columns[0]), dtype=self.DTYPE)
        for name, values in zip(FIELDS, columns, strict=True):
            records[name] = values
        records.tofile(self._file)
        self._rows += len(records)

    def close(self) -> None:
        self._file.seek(0)
        self._file.write(self._header(self._rows, self._header_length))
        self._file.close()
