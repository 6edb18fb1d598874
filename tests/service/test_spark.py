"""Bulk scoring on Spark (local[2]): the same numbers as `vae score`'s chunk loop, the schema, the errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service.core.artifact import load_artifact
from service.core.engine import PER_INPUT_OUTPUTS, ElboOptions, VaeEngine, score_in_chunks
from service.core.runtime import OnnxRuntime
from service.core.spark_scoring import SparkScoringError, score_dataframe, spark_session
from tests.helpers import missing_tool

FEATURES = ["a", "b", "c", "d", "e", "constant"]  # tests/helpers.py write_tabular_csv's header
N_ROWS, CHUNK_ROWS, SEED, IW = 300, 64, 7, 4


@pytest.fixture(scope="module")
def spark(request):
    """One local[2] session for the module: starting a JVM takes seconds."""
    if shutil.which("java") is None:
        missing_tool(request, "Java is", "Spark scoring untested")
    session = spark_session("local[2]", "vae tests")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def rows(tabular_model_dir) -> np.ndarray:
    """Rows near the model's data, (N_ROWS, 6) raw units."""
    manifest = load_artifact(tabular_model_dir).manifest
    offset, scale = np.asarray(manifest.preprocessing.offset), np.asarray(manifest.preprocessing.scale)
    return offset + scale * np.random.default_rng(1).standard_normal((N_ROWS, len(FEATURES)))


@pytest.fixture(scope="module")
def frame(spark, rows):
    """The rows in two partitions of 150 (not a multiple of CHUNK_ROWS, so a chunk straddles them), with the
    columns in another order than the model's and a text column besides."""
    import pandas as pd

    table = pd.DataFrame({name: rows[:, j] for j, name in reversed(list(enumerate(FEATURES)))})
    table.insert(0, "id", [f"r{i}" for i in range(N_ROWS)])
    df = spark.createDataFrame(table)
    assert df.rdd.getNumPartitions() == 2
    return df


def reference(model_dir: Path, rows: np.ndarray) -> dict[str, np.ndarray]:
    """`vae score`'s path: the engine over chunks of CHUNK_ROWS, chunk i with seed SEED + i."""
    artifact = load_artifact(model_dir)
    engine = VaeEngine(artifact.manifest, OnnxRuntime(artifact))
    chunks = list(score_in_chunks(engine, rows, ElboOptions(seed=SEED, iw_samples=IW), chunk_rows=CHUNK_ROWS))
    return {o.name: np.concatenate([np.asarray(c.value(o.name)) for c in chunks]) for o in PER_INPUT_OUTPUTS}


def collected(df) -> dict[str, np.ndarray]:
    table = df.orderBy("row").toArrow()
    return {name: table.column(name).to_numpy() for name in table.column_names}


def test_same_numbers_as_the_chunk_loop_of_vae_score(tabular_model_dir, frame, rows):
    scored = score_dataframe(frame, tabular_model_dir, seed=SEED, chunk_rows=CHUNK_ROWS, iw_samples=IW)
    got, expected = collected(scored), reference(tabular_model_dir, rows)
    assert got["row"].tolist() == list(range(N_ROWS))
    for name, values in expected.items():
        np.testing.assert_array_equal(got[name], values, err_msg=name)


def test_output_schema(tabular_model_dir, frame):
    scored = score_dataframe(frame, tabular_model_dir)
    assert scored.dtypes == [
        ("row", "bigint"),
        ("elbo", "double"),
        ("reconstruction", "double"),
        ("kl", "double"),
        ("log_likelihood", "double"),
        ("anomaly_score", "double"),
        ("is_anomaly", "boolean"),
        ("p_value", "double"),
    ]


def test_a_shipped_model_gives_the_same_numbers(tabular_model_dir, frame, rows):
    scored = score_dataframe(frame, tabular_model_dir, seed=SEED, chunk_rows=CHUNK_ROWS, iw_samples=IW, ship=True)
    np.testing.assert_array_equal(collected(scored)["elbo"], reference(tabular_model_dir, rows)["elbo"])


def test_a_missing_column_is_named(tabular_model_dir, frame):
    with pytest.raises(SparkScoringError) as err:
        score_dataframe(frame, tabular_model_dir, columns=["a", "b", "c", "d", "e", "f"])
    assert str(err.value) == "column 'f' not found; the columns are ['id', 'constant', 'e', 'd', 'c', 'b', 'a']"


def test_a_text_column_is_refused(tabular_model_dir, frame):
    with pytest.raises(SparkScoringError) as err:
        score_dataframe(frame, tabular_model_dir, columns=["id", "b", "c", "d", "e", "a"])
    assert str(err.value) == "column 'id' is not numeric: its type is string"


def test_the_wrong_number_of_columns(tabular_model_dir, frame):
    with pytest.raises(SparkScoringError) as err:
        score_dataframe(frame, tabular_model_dir, columns=["a", "b"])
    assert str(err.value) == f"2 feature columns ['a', 'b']; the model {tabular_model_dir} takes 6 features"


def test_cli_parquet_in_parquet_out(spark, tabular_model_dir, rows, tmp_path, capsys):
    """`vae score --engine spark` in this process: it reuses the module's session instead of starting a JVM."""
    from vae_cli.main import main

    data = tmp_path / "in.parquet"
    table = pa.table({"id": [f"r{i}" for i in range(N_ROWS)]} | {n: rows[:, j] for j, n in enumerate(FEATURES)})
    pq.write_table(table, data, row_group_size=100)
    out = tmp_path / "scores.parquet"
    argv = ["score", str(tabular_model_dir), "--engine", "spark", "--data", str(data), "--out", str(out)]
    options = ["--seed", str(SEED), "--chunk-rows", str(CHUNK_ROWS), "--iw-samples", str(IW)]
    assert main([*argv, *options]) == 0
    assert capsys.readouterr().out == f"wrote {out}: {N_ROWS} rows\n"
    written = pq.read_table(out)
    assert written.column("row").to_pylist() == list(range(N_ROWS))
    expected = reference(tabular_model_dir, rows)
    for name, values in expected.items():
        np.testing.assert_array_equal(written.column(name).to_numpy(), values, err_msg=name)
    assert main([*argv, *options]) == 2
    assert capsys.readouterr().err == (
        f"vae score: {out}: already exists; Spark writes a new directory, so name one that does not\n"
    )


def test_cli_names_a_non_finite_value(spark, tabular_model_dir, rows, tmp_path, capsys):
    from vae_cli.main import main

    bad = rows.copy()
    bad[70, 2] = np.nan
    data = tmp_path / "bad.parquet"
    pq.write_table(pa.table({n: bad[:, j] for j, n in enumerate(FEATURES)}), data)
    argv = ["score", str(tabular_model_dir), "--engine", "spark", "--data", str(data), "--out", str(tmp_path / "o")]
    assert main([*argv, "--chunk-rows", str(CHUNK_ROWS)]) == 2
    assert capsys.readouterr().err == (
        f"vae score: {data}: rows 64–127: instances[6]: feature 2 is nan, too far from the training data to "
        "represent after preprocessing (beyond float32)\n"
    )  # the chunk's rows, then the engine's own words (instance 6 of the chunk is row 70)


def test_a_worker_s_engine_follows_a_new_export_into_its_directory(tmp_path, digits_model_dir, tabular_model_dir):
    """Spark reuses its Python workers across jobs: an engine cached by a path must not outlive the export it
    loaded (no Spark needed: engine_for is what each worker calls per chunk)."""
    from service.core import spark_scoring

    live = Path(shutil.copytree(digits_model_dir, tmp_path / "live"))
    first = spark_scoring.engine_for(str(live), "onnx")
    assert spark_scoring.engine_for(str(live), "onnx") is first  # loaded once per export, not per chunk
    shutil.rmtree(live)
    shutil.copytree(tabular_model_dir, live)  # a new export into the same directory
    second = spark_scoring.engine_for(str(live), "onnx")
    assert second is not first
    assert second.manifest == load_artifact(tabular_model_dir).manifest
    assert spark_scoring.engine_for(str(live), "onnx") is second
    assert [key for key in spark_scoring._ENGINES if key[0] == str(live.resolve())] == [(str(live.resolve()), "onnx")]
