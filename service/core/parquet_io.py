"""Parquet in and out, a row group (or a batch of rows) at a time, so memory stays bounded by the chunk size.

`vae score` reads its rows and writes its answers here; anything else that streams Parquet (Spark scoring,
`vae train`) can reuse it. pyarrow only: no pandas.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


class ParquetInputError(ValueError):
    """A Parquet file whose rows cannot be read as numbers; the message names the file and the problem."""


def parquet_rows(path: Path) -> int:
    """The number of rows in the file, from its footer (nothing else is read)."""
    return open_parquet(path).metadata.num_rows


def numeric_columns(path: Path, columns: Sequence[str] | None = None) -> list[str]:
    """The columns to read: `columns` in that order, checked to exist and be numeric; else every column."""
    schema = open_parquet(path).schema_arrow
    chosen = list(columns) if columns else list(schema.names)
    missing = [name for name in chosen if name not in schema.names]
    if missing:
        raise ParquetInputError(
            f"{path}: no column named {', '.join(repr(m) for m in missing)}; it has {', '.join(schema.names)}"
        )
    for name in chosen:
        kind = schema.field(name).type
        if not (is_numeric(kind) or pa.types.is_boolean(kind)):
            raise ParquetInputError(f"{path}: column {name!r} holds {kind}, not numbers")
    return chosen


def is_numeric(kind: pa.DataType) -> bool:
    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind))


def first_null_row(column: pa.Array | pa.ChunkedArray, first_row: int = 0) -> int | None:
    """The file row of the column's first null, counting the column's rows from `first_row`; None if none."""
    if not column.null_count:
        return None
    return first_row + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])


def read_parquet_chunks(path: Path, columns: Sequence[str], chunk_rows: int) -> Iterator[np.ndarray]:
    """(rows, len(columns)) float64 arrays of at most `chunk_rows` rows, in file order.

    pyarrow decodes one row group at a time and hands out batches of it, so a file of any size is read in
    memory of about one row group plus one chunk.
    """
    file = open_parquet(path)
    first = 0
    for batch in file.iter_batches(batch_size=chunk_rows, columns=list(columns), use_threads=False):
        values = np.empty((batch.num_rows, len(columns)), dtype=np.float64)
        for j, column in enumerate(batch.columns):
            row = first_null_row(column, first)
            if row is not None:
                raise ParquetInputError(f"{path}: row {row}, column {columns[j]!r} is missing (null)")
            values[:, j] = column.to_numpy(zero_copy_only=False)
        first += batch.num_rows
        yield values


def open_parquet(path: Path) -> pq.ParquetFile:
    try:
        # No pre-buffering: it reads ahead across row groups (twice the memory, measured), which only pays on
        # high-latency object stores; a local file read in order needs one row group at a time.
        return pq.ParquetFile(path, pre_buffer=False)
    except (pa.ArrowException, OSError) as exc:
        raise ParquetInputError(f"{path}: not a readable Parquet file ({exc})") from None


class ParquetTableWriter:
    """Appends tables of one schema to a Parquet file, one row group per table."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self._writer = pq.ParquetWriter(path, schema)

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table)

    def close(self) -> None:
        self._writer.close()
