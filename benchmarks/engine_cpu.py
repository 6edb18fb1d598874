"""CPU time per one-instance /elbo request in the engine alone: prepare_elbo, then elbo_batch on a batch of them.

This is the work service/http/batching.py hands the engine for every batch it forms. It is measured as CPU
time (time.process_time) over many calls, because the machine it was written on was shared with other jobs
and wall-clock numbers moved by tens of percent. Each measurement runs in a fresh process with `PYTHONPATH`
pointing at one source tree, the trees alternating round by round; the median round is printed.

    .venv/bin/python benchmarks/engine_cpu.py MODEL_DIR --baseline-src /tmp/main-src [--rounds 3]

Without --baseline-src only this tree is measured. `--worker TREE` is the per-process measurement itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
BATCHES = (1, 8, 32, 64)


def measure(model_dir: Path, batch: int, iw_samples: int | None, seconds: float) -> tuple[float, float]:
    """(prepare_elbo, elbo_batch) CPU microseconds per request, for `batch` one-instance requests per call."""
    import numpy as np

    from service.core.artifact import load_artifact
    from service.core.engine import ElboOptions, VaeEngine
    from service.core.runtime import load_runtime

    artifact = load_artifact(model_dir, runtime="onnx")
    # One ONNX Runtime thread: its CPU time is then the work itself, not idle threads waking on a busy machine.
    engine = VaeEngine(artifact.manifest, load_runtime(artifact, "onnx", threads=1))
    manifest = artifact.manifest
    row = manifest.preprocessing.to_raw(np.full((1, manifest.n_features), 0.3))
    # iw_samples None: the model's default request (its estimator, K and L); else n_samples 1 and that K.
    options = [
        ElboOptions(seed=seed) if iw_samples is None else ElboOptions(seed=seed, n_samples=1, iw_samples=iw_samples)
        for seed in range(batch)
    ]
    for _ in range(20):  # warm-up: ONNX Runtime's first calls at a new batch size allocate
        engine.elbo_batch([engine.prepare_elbo(row, o) for o in options])
    prepare_cpu = batch_cpu = 0.0
    calls = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.process_time()
        prepared = [engine.prepare_elbo(row, o) for o in options]
        t1 = time.process_time()
        engine.elbo_batch(prepared)
        t2 = time.process_time()
        prepare_cpu += t1 - t0
        batch_cpu += t2 - t1
        calls += 1
    per_request = 1e6 / (calls * batch)
    return prepare_cpu * per_request, batch_cpu * per_request


def worker(model_dir: Path, seconds: float) -> None:
    """One round for the tree on sys.path: every cell, printed as one JSON line."""
    cells = {}
    for iw_samples in (1, None):
        for batch in BATCHES:
            cells[f"{batch},{iw_samples}"] = measure(model_dir, batch, iw_samples, seconds)
    print(json.dumps(cells))


def run_round(tree: Path, model_dir: Path, seconds: float) -> dict[str, list[float]]:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, str(model_dir), "--worker", "--seconds", str(seconds)]
    out = subprocess.run(command, env=env, cwd=tree, check=True, capture_output=True, text=True).stdout
    result: dict[str, list[float]] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--baseline-src", type=Path, default=None, help="another source tree, e.g. main's")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per tree")
    parser.add_argument("--seconds", type=float, default=1.0, help="measured time per cell and round")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.model_dir, args.seconds)
        return
    trees = {"this tree": HERE}
    if args.baseline_src is not None:
        trees = {"baseline": args.baseline_src.resolve(), **trees}
    rounds: dict[str, list[dict[str, list[float]]]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            rounds[name].append(run_round(tree, args.model_dir, args.seconds))

    def median(name: str, cell: str, part: int | None) -> float:
        values = [r[cell][0] + r[cell][1] if part is None else r[cell][part] for r in rounds[name]]
        return statistics.median(values)

    names = list(trees)
    header = "| iw_samples | batch | " + " | ".join(f"{n}: prepare + elbo_batch = total µs" for n in names)
    print(header + (" | baseline / this |" if len(names) == 2 else " |"))
    print("|---" * (2 + len(names) + (len(names) == 2)) + "|")
    for cell in rounds[names[0]][0]:
        batch, iw = cell.split(",")
        iw_text = "default K" if iw == "None" else iw
        parts = [f"{median(n, cell, 0):.1f} + {median(n, cell, 1):.1f} = {median(n, cell, None):.1f}" for n in names]
        ratio = f" {median(names[0], cell, None) / median(names[1], cell, None):.2f}× |" if len(names) == 2 else ""
        print(f"| {iw_text} | {batch} | " + " | ".join(parts) + " |" + ratio)


if __name__ == "__main__":
    main()
