"""Bulk scoring benchmark: `vae score` (the function and the command) against bare ONNX Runtime.

"Bare ORT rows/s": the same ONNX Runtime sessions `vae score` loads (load_runtime(artifact, "onnx")) run the
encoder on each chunk of rows and the decoder on that chunk's rows x (n_samples + K) draws, in pieces of the
runtime's call_rows draws as the engine cuts its graphs' calls; no noise, no scoring maths, no file reading or
writing; the better of one stream of chunks on every core and two streams of one runtime thread each.
`vae score` does all of that on top: it reads a .npy of raw rows, draws the seeded noise, scores ln p(x|z),
KL and L_K, decides and writes every per-input field of /elbo.

Prints a table with rows/s and the ratio to bare ORT at K = 1 and K = 100 for each output format, for
score_file (in this process; model loading included) and the `vae score` command (a fresh process: imports
and model loading included), each the best of --repeats runs taken in turn. Trains its two models into
--workdir the first time (digits, and a heavier 784-1024-512 MLP on synthetic binary data) and reuses them.

    .venv/bin/python benchmarks/bulk_scoring.py [--workdir /tmp/vae-bulk-bench] [--no-scorer] [--chunk-rows N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from service.core import bulk
from service.core.artifact import load_artifact
from service.core.runtime import load_runtime

VAE = str(Path(sys.executable).with_name("vae"))
FORMATS = (".csv", ".npy", ".parquet")
KS = (1, 100)


def train_models(workdir: Path) -> dict[str, Path]:
    """The digits model as `vae train` makes it by default, and a heavier MLP; trained once, then reused."""
    digits, heavy = workdir / "digits", workdir / "heavy"
    if not (digits / "manifest.json").is_file():
        subprocess.run([VAE, "train", "--out", str(digits), "--epochs", "30", "--no-progress"], check=True)
    if not (heavy / "manifest.json").is_file():
        synthetic = workdir / "synthetic.npy"
        np.save(synthetic, (np.random.default_rng(0).random((3000, 784)) < 0.2).astype(np.float32))
        heavy_args = ["--likelihood", "bernoulli", "--hidden", "1024,512", "--latent-dim", "16", "--epochs", "2"]
        subprocess.run(
            [VAE, "train", "--data", str(synthetic), *heavy_args, "--score-iw-samples", "1"]
            + ["--out", str(heavy), "--no-progress"],
            check=True,
        )
    return {describe(digits, "digits"): digits, describe(heavy, "heavy"): heavy}


def describe(model_dir: Path, name: str) -> str:
    """A model's name with its shape, as the manifest records it: "digits mlp 64-[256, 128]-d8 bernoulli"."""
    m = load_artifact(model_dir, verify=False).manifest
    hidden = m.training.config.get("hidden") or "linear"
    return f"{name} {m.architecture} {m.n_features}-{hidden}-d{m.latent_dim} {m.likelihood}"


def input_rows(model_dir: Path, rows: int, path: Path) -> Path:
    """`rows` raw rows the model accepts, as a float32 .npy: real digits tiled, or binary synthetic rows."""
    manifest = load_artifact(model_dir, verify=False).manifest
    if manifest.n_features == 64:
        from sklearn.datasets import load_digits

        base = load_digits().data
        data = base[np.arange(rows) % len(base)]
    else:
        data = (np.random.default_rng(1).random((rows, manifest.n_features)) < 0.2).astype(np.float64)
    np.save(path, data.astype(np.float32))
    return path


def bare_ort_rows_per_s(model_dir: Path, rows: int, draws_per_row: int, chunk_rows: int) -> float:
    """The networks alone, nothing else: the encoder on each chunk of rows, the decoder on its draws in pieces
    of the runtime's call_rows draws, as the engine cuts its graphs' calls. The better of one stream of chunks
    with every core in each runtime call and two streams in threads with one runtime thread each (as score_file
    runs its chunks on two cores): so the comparison is with bare ONNX Runtime at its best on this machine, not
    with a setting score_file left behind."""
    one = _bare_streams(model_dir, rows, draws_per_row, chunk_rows, streams=1, threads=0)
    if bulk.default_streams() < 2:  # score_file's own rule for two chunks at once
        return one
    return max(one, _bare_streams(model_dir, rows, draws_per_row, chunk_rows, streams=2, threads=1))


def _bare_streams(model_dir: Path, rows: int, draws_per_row: int, chunk_rows: int, streams: int, threads: int) -> float:
    artifact = load_artifact(model_dir, runtime="onnx")
    runtime = load_runtime(artifact, "onnx", threads=threads)
    shape, d = artifact.manifest.input_shape, artifact.manifest.latent_dim
    rng = np.random.default_rng(0)
    x = rng.random((chunk_rows, *shape), dtype=np.float32)
    z = rng.standard_normal((chunk_rows * draws_per_row, d), dtype=np.float32)
    runtime.encode(x[:2]), runtime.decode(z[:2])  # warm-up, as score_file's first chunk is not

    def chunk(first: int) -> None:
        n = min(chunk_rows, rows - first)
        runtime.encode(x[:n])
        draws = z[: n * draws_per_row]
        for start in range(0, len(draws), runtime.call_rows):
            runtime.decode(draws[start : start + runtime.call_rows])

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=streams) as pool:
        list(pool.map(chunk, range(0, rows, chunk_rows)))
    return rows / (time.perf_counter() - started)


def function_rows_per_s(model_dir: Path, data: Path, out: Path, k: int, chunk_rows: int) -> float:
    started = time.perf_counter()
    rows = bulk.score_file(model_dir, data, out, iw_samples=k, n_samples=1, chunk_rows=chunk_rows, progress=False)
    return rows / (time.perf_counter() - started)


def cli_rows_per_s(model_dir: Path, data: Path, out: Path, k: int, chunk_rows: int, rows: int) -> float:
    command = [VAE, "score", str(model_dir), "--data", str(data), "--out", str(out), "--iw-samples", str(k)]
    command += ["--n-samples", "1"]  # as score_file is called above: without it, the model's calibrated L
    started = time.perf_counter()
    subprocess.run([*command, "--chunk-rows", str(chunk_rows), "--no-progress"], check=True, capture_output=True)
    return rows / (time.perf_counter() - started)


def without_scorer() -> None:
    """For the A/B: make every runtime report no scorer graph, so the engine decodes and scores in numpy."""
    from service.core import runtime

    original = runtime.graph_names
    runtime.graph_names = lambda artifact: tuple(g for g in original(artifact) if g != "scorer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vae-bulk-bench"))
    parser.add_argument("--chunk-rows", type=int, default=bulk.DEFAULT_CHUNK_ROWS)
    parser.add_argument("--no-scorer", action="store_true", help="A/B: score through the decoder graph and numpy")
    parser.add_argument("--no-cli", action="store_true", help="skip the `vae score` command runs")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each path; the best is reported")
    parser.add_argument("--rows", type=int, nargs=4, default=[1_000_000, 100_000, 60_000, 600],
                        metavar=("DIGITS_K1", "DIGITS_K100", "HEAVY_K1", "HEAVY_K100"))  # fmt: skip
    args = parser.parse_args()
    if args.no_scorer:
        without_scorer()
    args.workdir.mkdir(parents=True, exist_ok=True)
    models = train_models(args.workdir)
    row_counts = dict(zip([(m, k) for m in models for k in KS], args.rows, strict=True))
    scorer = "off" if args.no_scorer else "on"
    print(f"chunk_rows {args.chunk_rows}, scorer graph {scorer}, n_samples 1, best of {args.repeats} runs")
    print("| model | K | rows | bare ORT rows/s | output | score_file rows/s | ratio | `vae score` rows/s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, model_dir in models.items():
        for k in KS:
            rows = row_counts[name, k]
            data = input_rows(model_dir, rows, args.workdir / f"{model_dir.name}-{rows}.npy")
            for suffix in FORMATS:
                out = args.workdir / f"scores{suffix}"
                # Best of --repeats, each path measured next to the others in turn: on a shared machine the
                # slow runs are other people's work, the best ones are ours.
                bare, function, cli = 0.0, 0.0, 0.0
                for _ in range(args.repeats):
                    bare = max(bare, bare_ort_rows_per_s(model_dir, rows, 1 + k, args.chunk_rows))
                    function = max(function, function_rows_per_s(model_dir, data, out, k, args.chunk_rows))
                    if not args.no_cli:
                        cli = max(cli, cli_rows_per_s(model_dir, data, out, k, args.chunk_rows, rows))
                cli_cells = "| – | – |" if args.no_cli else f"| {cli:,.0f} | {cli / bare:.0%} |"
                print(
                    f"| {name} | {k} | {rows:,} | {bare:,.0f} | {suffix} | {function:,.0f} | {function / bare:.0%} "
                    f"{cli_cells}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
