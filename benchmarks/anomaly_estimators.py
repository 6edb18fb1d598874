"""Diagnosis: which Monte Carlo estimator of the model's fit makes the better anomaly score, with `vae train`'s
defaults. The served score is −L_K at the calibrated K; the alternative measured here is −ELBO_L, the ELBO's
reconstruction term averaged over L draws minus the closed-form KL (what /elbo returns as `elbo`), with L
chosen by the same noise rule as K (training/export.py noise_ladder) on the same calibration rows.

The two estimate different things. L_K → ln p(x) as K grows; the ELBO stays ln p(x) − KL(q(z|x) ‖ p(z|x)),
below it by the posterior gap. With an exact posterior (a linear model with shared gaussian noise, which
`vae train` starts at probabilistic PCA) the gap is 0 and L_1 is exact on every draw, so the ELBO only adds
noise; with an amortised encoder the gap is part of the score. The AUROC uses the anomaly labels, so this is
for study, never for choosing: `vae train` sees no labels.

    .venv/bin/python benchmarks/anomaly_estimators.py [--problems blobs,s-curve-12d,digit-3] [--seed 0]

Problems: the suite's (benchmarks/anomaly_suite.py) and digit-N (one-vs-rest, as anomaly_digits.py). Prints
one markdown row per problem.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anomaly_candidates import digit_problem  # noqa: E402
from anomaly_common import REQUEST_ROWS, auroc, capacity_label, engine_for, set_threads, train_default_vae  # noqa: E402
from anomaly_suite import PROBLEMS  # noqa: E402

from service.core.engine import ElboOptions, VaeEngine  # noqa: E402
from training.data import load_dataset  # noqa: E402
from training.export import noise_ladder  # noqa: E402
from training.plan import plan_training  # noqa: E402
from training.train_config import TrainConfig  # noqa: E402


def elbo_scores(engine: VaeEngine, x: np.ndarray, seed: int, n_samples: int) -> np.ndarray:
    """−ELBO_L of each row (K = 1 for the bound it also computes, the cheapest), REQUEST_ROWS rows per call."""
    parts = [
        -engine.elbo(
            x[start : start + REQUEST_ROWS], ElboOptions(seed=seed + start, n_samples=n_samples, iw_samples=1)
        ).elbo
        for start in range(0, len(x), REQUEST_ROWS)
    ]
    return np.concatenate(parts)


def served_scores(engine: VaeEngine, x: np.ndarray, seed: int) -> np.ndarray:
    """−L_K at the manifest's K: the served anomaly score."""
    parts = [
        -engine.elbo(x[start : start + REQUEST_ROWS], ElboOptions(seed=seed + start)).log_likelihood
        for start in range(0, len(x), REQUEST_ROWS)
    ]
    return np.concatenate(parts)


def rows_per_second(score, x: np.ndarray, passes: int = 3) -> float:
    best = np.inf
    for _ in range(passes):
        started = time.perf_counter()
        score(x)
        best = min(best, time.perf_counter() - started)
    return len(x) / best


def study(name: str, seed: int, workdir: Path) -> str:
    problem = digit_problem(int(name[6:]), seed) if name.startswith("digit-") else PROBLEMS[name](seed)
    artifact, error, _, _ = train_default_vae(problem.x_train, workdir, name, seed)
    if artifact is None:
        return f"| {name} | training failed: {error} |"
    engine = engine_for(artifact)
    # The calibration rows `vae train` held out, as its K rule saw them.
    npy = workdir / f"{name}.npy"
    dataset = load_dataset(str(npy))
    cal = dataset.x[plan_training(TrainConfig(data=str(npy), seed=seed), dataset).cal_rows]
    cal = cal.reshape(len(cal), -1).astype(np.float64)
    ladder = noise_ladder(lambda rows, rung_seed, n: elbo_scores(engine, rows, rung_seed, n), cal, seed)
    n_samples = ladder.ladder[-1].k
    x = problem.x_test.reshape(len(problem.x_test), -1).astype(np.float64)
    served = served_scores(engine, x, seed + 5)
    elbo = elbo_scores(engine, x, seed + 5, n_samples)
    k = artifact.manifest.scoring.iw_samples
    return (
        f"| {name} | {capacity_label(artifact.manifest.training.config)} | {k} | {auroc(problem.labels, served):.4f} "
        f"| {n_samples} | {auroc(problem.labels, elbo):.4f} "
        f"| {rows_per_second(lambda rows: served_scores(engine, rows, seed), x):,.0f} "
        f"| {rows_per_second(lambda rows: elbo_scores(engine, rows, seed, n_samples), x):,.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    set_threads(1)
    print(
        "| problem | chosen (hidden / latent) | K | AUROC −L_K (served) | L (noise rule) | AUROC −ELBO_L "
        "| rows/s −L_K | rows/s −ELBO_L |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.problems.split(","):
            print(study(name, args.seed, Path(tmp)), flush=True)


if __name__ == "__main__":
    main()
