"""Bulk scoring on Apache Spark: a DataFrame in, /elbo's per-input fields out, scored by the engine behind /elbo.

The seed rule makes the numbers those of `vae score`: the DataFrame's rows are numbered 0, 1, ... in its
order, row r belongs to chunk r // chunk_rows, and chunk i is scored as one /elbo request with those rows
and seed + i, exactly as `vae score` scores its chunk i. A chunk's noise depends on all of its rows (the
draws of row j follow those of rows 0..j-1), so a chunk is scored whole: rows are grouped by chunk
(`groupBy(chunk).applyInArrow`, one shuffle) rather than scored where they happen to sit, because the
partitions' boundaries need not fall on chunk boundaries.

pyspark is imported inside the functions: the rest of the core, and the service, never need it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.core.artifact import load_artifact, manifest_version
from service.core.bulk import DEFAULT_CHUNK_ROWS
from service.core.engine import PER_INPUT_OUTPUTS, ElboOptions, VaeEngine
from service.core.errors import ServiceError
from service.core.runtime import load_runtime

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

ROW = "row"  # the input row's 0-based position in the DataFrame, the first output column
_CHUNK = "_vae_chunk"  # the chunk a row belongs to; internal, not in the output
_SPARK_TYPES = {float: "double", bool: "boolean", int: "bigint"}
# spark_partition_id() << 33 | the row's position in its partition (Spark's documented layout of the id)
_PARTITION_SHIFT = 33
# Partitions of the scoring stage per core (defaultParallelism): a few, so a slow one does not hold up the
# rest, while each Python worker still loads the model once and scores many chunks.
PARTITIONS_PER_CORE = 2
_NUMERIC_SPARK_TYPES = ("tinyint", "smallint", "int", "bigint", "float", "double")


class SparkScoringError(ValueError):
    """A DataFrame or file that cannot be scored; the message names it and the problem."""


def output_ddl() -> str:
    """The scored DataFrame's schema: the row, then /elbo's per-input fields with their types."""
    fields = [f"{ROW} bigint", *(f"{o.name} {_SPARK_TYPES[o.dtype]}" for o in PER_INPUT_OUTPUTS)]
    return ", ".join(fields)


# One engine per model directory and runtime in each Python worker process, with its manifest's version: Spark
# reuses its workers (spark.python.worker.reuse, on by default), so a model is loaded and verified once per
# worker and export, not per chunk.
_ENGINES: dict[tuple[str, str], tuple[str, VaeEngine]] = {}


def engine_for(model_dir: str, runtime: str) -> VaeEngine:
    """The cached engine of this worker for a model directory; one ONNX Runtime thread per Spark task slot. A new
    export into the directory (a new manifest version) replaces it: a worker kept from an earlier job scores with
    the model the directory holds now, never with a mix of the two (its ONNX sessions are made lazily)."""
    path = Path(model_dir).resolve()
    key = (str(path), runtime)
    try:
        version = manifest_version(path)  # a small file: read for every chunk
    except OSError:  # gone, or being replaced this instant: load_artifact names the problem if nothing is cached
        version = None
    cached = _ENGINES.get(key)
    if cached is None or (version is not None and cached[0] != version):
        artifact = load_artifact(path, runtime=runtime)
        engine = VaeEngine(artifact.manifest, load_runtime(artifact, runtime, threads=1, lazy=True))
        cached = _ENGINES[key] = (version or manifest_version(path), engine)
    return cached[1]


def score_dataframe(
    df: DataFrame,
    model_dir: str | Path,
    *,
    columns: list[str] | None = None,
    seed: int = 0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    iw_samples: int | None = None,
    n_samples: int | None = None,
    runtime: str = "onnx",
    ship: bool = False,
) -> DataFrame:
    """Score every row of `df`; returns a DataFrame with `row` and /elbo's per-input fields (output_ddl()),
    its partitions in row order.

    `columns`: the features, in the model's order (default: the manifest's feature_names, else every
    numeric column). `model_dir` must be readable at the same path on every executor (shared storage),
    or `ship=True` sends it with the job (SparkContext.addFile). Chunk i of `chunk_rows` consecutive rows
    is scored with seed + i, so the numbers equal `vae score`'s for the same seed and chunking; `df` must
    list its rows in a repeatable order (a file scan, or after orderBy), since it is read twice.
    """
    return _score(df, model_dir, columns, seed, chunk_rows, iw_samples, n_samples, runtime, ship)[0]


def _score(
    df: DataFrame,
    model_dir: str | Path,
    columns: list[str] | None,
    seed: int,
    chunk_rows: int,
    iw_samples: int | None,
    n_samples: int | None,
    runtime: str,
    ship: bool,
) -> tuple[DataFrame, int]:
    """score_dataframe, and the number of rows (counted on the way)."""
    from pyspark import SparkFiles

    if chunk_rows < 1:
        raise SparkScoringError(f"chunk_rows must be at least 1, got {chunk_rows}")
    manifest = load_artifact(model_dir, runtime=runtime).manifest  # fails here, on the driver, before any job starts
    features = _feature_columns(df, model_dir, columns, manifest.feature_names, manifest.n_features)
    indexed, n_rows = _numbered(df.select(*features), chunk_rows)
    location = str(model_dir)
    if ship:
        df.sparkSession.sparkContext.addFile(location, recursive=True)
        location = Path(location).resolve().name

    def score_chunk(table: pa.Table) -> pa.Table:
        import pyarrow as pa

        path = SparkFiles.get(location) if ship else location
        table = table.sort_by(ROW)
        rows = table.column(ROW).to_numpy()
        chunk = table.column(_CHUNK)[0].as_py()
        x = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in features]).astype(np.float64)
        options = ElboOptions(n_samples=n_samples, seed=seed + chunk, iw_samples=iw_samples)
        try:
            scored = engine_for(path, runtime).elbo(x, options)
        except ServiceError as exc:
            raise SparkScoringError(f"rows {rows[0]}–{rows[-1]}: {exc.message}") from None
        out = {ROW: pa.array(rows, pa.int64())}
        out |= {o.name: pa.array(np.asarray(scored.value(o.name))) for o in PER_INPUT_OUTPUTS}
        return pa.table(out)

    # Range partitioning by chunk puts whole chunks, in order, into a few partitions per core: the grouping
    # needs no second shuffle, and the output is sorted by row once each partition is.
    n_chunks = -(-n_rows // chunk_rows)
    n_partitions = max(1, min(n_chunks, PARTITIONS_PER_CORE * df.sparkSession.sparkContext.defaultParallelism))
    grouped = indexed.repartitionByRange(n_partitions, _CHUNK).groupBy(_CHUNK)
    scored = grouped.applyInArrow(score_chunk, output_ddl()).sortWithinPartitions(ROW)
    return scored, n_rows


def _feature_columns(
    df: DataFrame, model_dir: str | Path, columns: list[str] | None, trained_on: list[str] | None, n_features: int
) -> list[str]:
    types = dict(df.dtypes)
    if columns is None:
        columns = trained_on or [name for name, kind in df.dtypes if kind in _NUMERIC_SPARK_TYPES]
    for name in columns:
        if name not in types:
            raise SparkScoringError(f"column {name!r} not found; the columns are {df.columns}")
        if types[name] not in _NUMERIC_SPARK_TYPES:
            raise SparkScoringError(f"column {name!r} is not numeric: its type is {types[name]}")
    if len(columns) != n_features:
        raise SparkScoringError(
            f"{len(columns)} feature columns {columns}; the model {model_dir} takes {n_features} features"
        )
    return columns


def _numbered(df: DataFrame, chunk_rows: int) -> tuple[DataFrame, int]:
    """`df` with ROW (0, 1, ... in the DataFrame's order) and its chunk; one pass counts each partition's rows.

    monotonically_increasing_id() is (partition << 33) + the row's position in its partition, so a row's
    number is the rows of the partitions before it plus that position.
    """
    from pyspark.sql import functions as F

    with_id = df.withColumn("_vae_id", F.monotonically_increasing_id())
    partition = F.shiftright("_vae_id", _PARTITION_SHIFT)
    counts: dict[int, int] = {p: n for p, n in with_id.groupBy(partition.alias("p")).count().collect()}
    n_partitions = max(counts, default=-1) + 1
    offsets = np.concatenate([[0], np.cumsum([counts.get(p, 0) for p in range(n_partitions)])]).tolist()
    first_row = F.array(*[F.lit(o) for o in offsets[:-1]]) if n_partitions else F.array(F.lit(0))
    position = F.col("_vae_id") - F.shiftleft(partition, _PARTITION_SHIFT)
    numbered = with_id.withColumn(ROW, first_row[partition.cast("int")] + position)
    numbered = numbered.withColumn(_CHUNK, F.floor(F.col(ROW) / chunk_rows).cast("bigint")).drop("_vae_id")
    return numbered, int(offsets[-1])


def spark_session(master: str | None = None, app_name: str = "vae score") -> SparkSession:
    """A Spark session whose Python workers run this interpreter (with this package installed), quiet.

    Without `master`, Spark's own default applies: spark-submit's --master, or PYSPARK_SUBMIT_ARGS's, else
    local[*].
    """
    from pyspark.sql import SparkSession

    # Local workers otherwise run the `python3` on PATH, which need not have pyarrow or this package;
    # the environment variable is what the local launcher reads (spark.pyspark.python was not honoured here).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master is not None:
        builder = builder.master(master)
    spark = builder.config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def score_parquet(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    spark: SparkSession | None = None,
    **options: Any,
) -> int:
    """`vae score --engine spark`: a Parquet file (or directory of them) in, a directory of Parquet part files
    out, in row order; returns the number of rows. `options` are score_dataframe's. An existing `out` is
    refused, never replaced: Spark would delete the whole directory first."""
    from pyspark.errors import PythonException

    data, out = Path(data), Path(out)
    if not data.exists():
        raise SparkScoringError(f"{data}: no such file")
    if out.exists():
        raise SparkScoringError(f"{out}: already exists; Spark writes a new directory, so name one that does not")
    options.pop("progress", None)  # Spark shows its own progress
    spark = spark if spark is not None else spark_session()
    try:
        scored, n_rows = _score(spark.read.parquet(str(data)), model_dir, **_score_options(options))
        scored.write.parquet(str(out))  # sorted by row already: part files in row order
    except PythonException as exc:
        raise SparkScoringError(f"{data}: {_worker_message(exc)}") from None
    return n_rows


def _score_options(options: dict[str, Any]) -> dict[str, Any]:
    defaults = dict(
        columns=None, seed=0, chunk_rows=DEFAULT_CHUNK_ROWS, iw_samples=None, n_samples=None, runtime="onnx", ship=False
    )
    unknown = options.keys() - defaults.keys()
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}")
    return defaults | options


def _worker_message(exc: Exception) -> str:
    """The SparkScoringError a Python worker raised, from the traceback Spark wraps it in."""
    marker = f"{SparkScoringError.__name__}: "
    lines = [line for line in str(exc).splitlines() if marker in line]
    return lines[-1].split(marker, 1)[1] if lines else str(exc).strip().splitlines()[0]
