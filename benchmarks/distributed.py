"""Issue 7's benchmark: training wall-clock with 1 and 2 processes, and `vae score` next to the raw runtime.

    .venv/bin/python benchmarks/distributed.py [--rows 60000] [--epochs 3] [--score-rows 60000]

1. A synthetic data set of ROWS x 784 values in [0, 1] (a sigmoid of a 16-dimensional linear map plus noise),
   written as .npy, is trained on with `vae train` in one process (torch's own threads: both cores), then
   in one process with OMP_NUM_THREADS=1, then with `torchrun --standalone --nproc-per-node 2 -m training.train`
   (torchrun gives each process one thread).
   --batch-size is per process, so two processes take half as many steps per epoch on the same data.
   Reported: seconds per epoch (from metrics.jsonl), the whole command's wall-clock (export and
   calibration included), and the final validation ELBO of each.
2. The model of the one-process run scores the same file: `vae score` (memory-mapped .npy, chunks,
   CSV out) against the same engine on the same rows already in memory (no file, no CSV), and against the
   bare ONNX Runtime sessions doing the same network work (one encoder pass and 1 + K decoder passes per row,
   no scoring maths), at K=1 and at the model's calibrated K.

Numbers are printed as a Markdown table, for docs/benchmark-distributed.md. They are measurements, not targets.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def synthetic(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((16, 784)).astype(np.float32) * 0.6
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, 784))
    for start in range(0, rows, 10_000):
        n = min(10_000, rows - start)
        logits = rng.standard_normal((n, 16)).astype(np.float32) @ weights
        logits += 0.3 * rng.standard_normal(logits.shape).astype(np.float32)
        out[start : start + n] = 1.0 / (1.0 + np.exp(-logits))
    out.flush()
    del out


def train(cmd: list[str], out: Path, env: dict) -> dict:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    epoch_seconds = [row["seconds"] for row in history]
    return {
        "wall": wall,
        "epoch_mean": float(np.mean(epoch_seconds)),
        "train_total": float(np.sum(epoch_seconds)),
        "val_elbo": history[-1]["val_elbo"],
    }


def score_rates(model_dir: Path, data: Path, rows: int, iw_samples: int, tmp: Path) -> dict[str, float]:
    from service.core.artifact import load_artifact
    from service.core.bulk import score_file
    from service.core.engine import ElboOptions, VaeEngine
    from service.core.runtime import load_runtime

    chunk = 1024
    source = np.load(data, mmap_mode="r")
    if rows < len(source):
        subset = tmp / f"first-{rows}.npy"
        np.save(subset, source[:rows])
        data = subset
    started = time.perf_counter()
    # n_samples 1, as the in-memory pass below and the bare graphs' 1 + K draws (the model's default L otherwise).
    score_file(
        model_dir, data, tmp / "scores.csv", iw_samples=iw_samples, n_samples=1, progress=False, chunk_rows=chunk
    )
    bulk = rows / (time.perf_counter() - started)

    artifact = load_artifact(model_dir, runtime="onnx")
    runtime = load_runtime(artifact, "onnx")
    engine = VaeEngine(artifact.manifest, runtime)
    x = np.load(data)[:rows].astype(np.float64)
    started = time.perf_counter()
    for i, start in enumerate(range(0, rows, chunk)):
        engine.elbo(x[start : start + chunk], ElboOptions(n_samples=1, seed=i, iw_samples=iw_samples))
    in_memory = rows / (time.perf_counter() - started)

    # The bare graphs doing the same network work as the engine: encode each row, decode 1 + K draws of z
    # (the ELBO's one draw and the K importance samples); no noise, no scoring maths, no file.
    x32 = x.astype(np.float32)
    latent = artifact.manifest.latent_dim
    started = time.perf_counter()
    for start in range(0, rows, chunk):
        mu, _ = runtime.encode(x32[start : start + chunk])
        z = np.repeat(mu, 1 + iw_samples, axis=0)
        for z_start in range(0, len(z), 64 * chunk):
            runtime.decode(z[z_start : z_start + 64 * chunk].reshape(-1, latent))
    raw = rows / (time.perf_counter() - started)
    return {"vae score": bulk, "engine, in memory": in_memory, "raw ONNX Runtime": raw}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=60_000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--score-rows", type=int, default=60_000, help="rows scored at K=1")
    p.add_argument("--score-rows-iw", type=int, default=6_000, help="rows scored at the calibrated K")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vae-bench-dist-"))
    data = tmp / "synthetic.npy"
    synthetic(data, args.rows)
    flags = [
        "--data",
        str(data),
        "--likelihood",
        "bernoulli",
        "--hidden",
        "512,256",
        "--latent-dim",
        "16",
        "--epochs",
        str(args.epochs),
        "--patience",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--score-iw-samples",
        "100",
        "--no-progress",
        "--device",
        "cpu",
    ]
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    one = train([str(BIN / "vae"), "train", *flags, "--out", str(tmp / "one")], tmp / "one", env)
    one_thread = train(
        [str(BIN / "vae"), "train", *flags, "--out", str(tmp / "one-thread")],
        tmp / "one-thread",
        env | {"OMP_NUM_THREADS": "1"},
    )
    two = train(
        [
            str(BIN / "torchrun"),
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "training.train",
            *flags,
            "--out",
            str(tmp / "two"),
        ],
        tmp / "two",
        env,
    )

    print(
        f"\n## Training: {args.rows:,} x 784, MLP 512,256, latent 16, {args.epochs} epochs, "
        f"--batch-size {args.batch_size} per process, {os.cpu_count()} cores\n"
    )
    print("| processes | s / epoch | training s | whole command s | final val ELBO (nats) |")
    print("|---|---|---|---|---|")
    runs = (
        ("1, torch's default threads", one),
        ("1, OMP_NUM_THREADS=1", one_thread),
        ("2 (torchrun, gloo, 1 thread each)", two),
    )
    for name, r in runs:
        print(f"| {name} | {r['epoch_mean']:.1f} | {r['train_total']:.1f} | {r['wall']:.1f} | {r['val_elbo']:.2f} |")
    for name, base in (("default threads", one), ("one thread", one_thread)):
        print(
            f"\n2 processes against 1 process with {name}: per epoch {base['epoch_mean'] / two['epoch_mean']:.2f}x, "
            f"whole command {base['wall'] / two['wall']:.2f}x"
        )

    manifest = json.loads((tmp / "one" / "manifest.json").read_text())
    scoring = manifest["scoring"]
    # The default request's draws: K of L_K, or L of the ELBO (measured as L_K at that K: the same decoder work).
    calibrated_k = scoring["n_samples"] if scoring.get("estimator") == "elbo" else scoring["iw_samples"]
    print("\n## Scoring rows of the same file (chunks of 1024)\n")
    print("| K (iw_samples) | rows | path | rows / s | share of raw |")
    print("|---|---|---|---|---|")
    for k, rows in ((1, args.score_rows), (calibrated_k, args.score_rows_iw)):
        rates = score_rates(tmp / "one", data, rows, k, tmp)
        raw = rates["raw ONNX Runtime"]
        for path, rate in rates.items():
            print(f"| {k} | {rows:,} | {path} | {rate:,.0f} | {rate / raw:.2f} |")
    print(f"\n(files in {tmp})")


if __name__ == "__main__":
    main()
