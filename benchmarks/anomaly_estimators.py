"""Diagnosis: which Monte Carlo estimator of the model's fit makes the better anomaly score, with `vae train`'s
defaults: −L_K, the importance-weighted bound, or −ELBO_L, the ELBO's reconstruction term averaged over L
draws minus the closed-form KL (what /elbo returns as `elbo`). Each gets its K or L from the noise rule
`vae train` uses (training/export.py choose_draws) on the calibration rows it held out. `vae train` serves
−L_K for a model whose encoder is the exact posterior and −ELBO_L for every other (training/export.py
default_estimator); the table says which.

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
from anomaly_common import auroc, capacity_label, engine_for, set_threads, train_default_vae  # noqa: E402
from anomaly_suite import PROBLEMS  # noqa: E402

from training.data import load_dataset  # noqa: E402
from training.export import choose_draws, estimator_scores  # noqa: E402
from training.plan import plan_training  # noqa: E402
from training.train_config import TrainConfig  # noqa: E402


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
    # The calibration rows `vae train` held out, as its noise rule saw them.
    npy = workdir / f"{name}.npy"
    dataset = load_dataset(str(npy))
    cal = dataset.x[plan_training(TrainConfig(data=str(npy), seed=seed), dataset).cal_rows]
    cal = cal.reshape(len(cal), -1).astype(np.float64)
    x = problem.x_test.reshape(len(problem.x_test), -1).astype(np.float64)
    cells = [name, capacity_label(artifact.manifest.training.config), artifact.manifest.scoring.estimator]
    for estimator in ("iwae", "elbo"):
        draws = choose_draws(engine, cal, seed, estimator).ladder[-1].k
        scores = estimator_scores(engine, x, seed + 5, estimator, draws)
        speed = rows_per_second(lambda rows, e=estimator, d=draws: estimator_scores(engine, rows, seed, e, d), x)
        cells += [str(draws), f"{auroc(problem.labels, scores):.4f}", f"{speed:,.0f}"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    set_threads(1)
    print(
        "| problem | chosen (hidden / latent) | served estimator | K (noise rule) | AUROC −L_K | rows/s −L_K "
        "| L (noise rule) | AUROC −ELBO_L | rows/s −ELBO_L |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.problems.split(","):
            print(study(name, args.seed, Path(tmp)), flush=True)


if __name__ == "__main__":
    main()
