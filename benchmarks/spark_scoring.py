"""Issue 17's benchmark: rows per second of bulk scoring on Spark with 1 and 2 local executors, against the
in-process engine loop behind `vae score`.

    .venv/bin/python benchmarks/spark_scoring.py [--rows 200000] [--chunk-rows 1024] [--model DIR]

1. Without --model, a small digits model is trained first (`vae train --data digits`, small flags,
   --score-iw-samples 16), so every row costs one encoder pass and 1 + 16 decoder rows.
2. The data: scikit-learn's 1,797 digits repeated to ROWS rows (64 features), written once as a .npy and once
   as a Parquet file of row groups of 65,536 rows.
3. Timed, one after the other, each scoring every row with seed 0 and the same chunking:
   - engine loop: score_in_chunks over the rows already in memory, ONNX Runtime with its default threads
     (`vae score`'s engine, without its file reading and CSV writing);
   - `vae score`: the command, .npy in, CSV out (a subprocess: its start-up is included);
   - Spark local[1] and local[2]: score_parquet (Parquet in, the row count pass, the shuffle by chunk,
     scoring, Parquet out) in a session started beforehand; the session's start is reported apart.
   Spark's numbers are then checked against the engine loop's: every elbo must be equal.

Prints a Markdown table for docs/scaling.md. The numbers are measurements on this machine, not targets.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent


def train_model(out: Path) -> Path:
    flags = ["--hidden", "64,32", "--latent-dim", "4", "--epochs", "20", "--score-iw-samples", "16"]
    subprocess.run(
        [str(BIN / "vae"), "train", "--data", "digits", "--out", str(out), *flags, "--no-progress"], check=True
    )
    return out


def write_data(root: Path, rows: int) -> tuple[np.ndarray, Path, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_digits

    digits = load_digits().data
    x = np.resize(digits, (rows, digits.shape[1])).astype(np.float64)
    npy, parquet = root / "rows.npy", root / "rows.parquet"
    np.save(npy, x)
    table = pa.table({f"p{j}": x[:, j] for j in range(x.shape[1])})
    pq.write_table(table, parquet, row_group_size=65_536)
    return x, npy, parquet


def engine_loop(model_dir: Path, x: np.ndarray, chunk_rows: int) -> tuple[float, np.ndarray]:
    from service.core.artifact import load_artifact
    from service.core.engine import ElboOptions, VaeEngine, score_in_chunks
    from service.core.runtime import load_runtime

    artifact = load_artifact(model_dir, runtime="onnx")
    engine = VaeEngine(artifact.manifest, load_runtime(artifact, "onnx"))
    started = time.perf_counter()
    elbo = np.concatenate([s.elbo for s in score_in_chunks(engine, x, ElboOptions(seed=0), chunk_rows=chunk_rows)])
    return time.perf_counter() - started, elbo


def vae_score(model_dir: Path, npy: Path, out: Path, chunk_rows: int) -> float:
    started = time.perf_counter()
    command = [str(BIN / "vae"), "score", str(model_dir), "--data", str(npy), "--out", str(out)]
    subprocess.run([*command, "--chunk-rows", str(chunk_rows), "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def spark_run(
    master: str, model_dir: Path, parquet: Path, out: Path, chunk_rows: int
) -> tuple[float, float, np.ndarray]:
    import pyarrow.parquet as pq

    from service.core.spark_scoring import score_parquet, spark_session

    started = time.perf_counter()
    spark = spark_session(master, f"vae benchmark {master}")
    spark.range(1).count()  # the JVM and the first job are up
    session_s = time.perf_counter() - started
    try:
        started = time.perf_counter()
        score_parquet(model_dir, parquet, out, spark=spark, seed=0, chunk_rows=chunk_rows)
        seconds = time.perf_counter() - started
    finally:
        spark.stop()
    return session_s, seconds, pq.read_table(out, columns=["elbo"]).column("elbo").to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--chunk-rows", type=int, default=1024)
    parser.add_argument(
        "--model", type=Path, default=None, help="a model directory of 64 features (default: train one)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vae-spark-bench-") as tmp:
        root = Path(tmp)
        model_dir = args.model or train_model(root / "model")
        x, npy, parquet = write_data(root, args.rows)
        loop_s, expected = engine_loop(model_dir, x, args.chunk_rows)
        cli_s = vae_score(model_dir, npy, root / "scores.csv", args.chunk_rows)
        results = [("engine loop (in process)", None, loop_s), ("`vae score` (.npy in, CSV out)", None, cli_s)]
        for master in ("local[1]", "local[2]"):
            session_s, seconds, elbo = spark_run(master, model_dir, parquet, root / f"out-{master[6]}", args.chunk_rows)
            if not np.array_equal(elbo, expected):
                raise SystemExit(f"{master}: the elbo differs from the engine loop's")
            results.append((f"Spark {master} (Parquet in and out)", session_s, seconds))
    print(f"{args.rows} rows x 64 features, chunk {args.chunk_rows}, K=16, seed 0; Spark's elbo equal to the loop's\n")
    print("| path | session start (s) | scoring (s) | rows/s | vs engine loop |")
    print("|---|---:|---:|---:|---:|")
    for name, session_s, seconds in results:
        start = "" if session_s is None else f"{session_s:.1f}"
        print(f"| {name} | {start} | {seconds:.1f} | {args.rows / seconds:,.0f} | {loop_s / seconds:.2f} |")


if __name__ == "__main__":
    main()
