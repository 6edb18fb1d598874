"""Diagnosis: every capacity `vae train` would compare, fitted exactly as its selection fits them, with the held-out
L_16 that selection ranks by (and its paired standard error against the best) next to the test AUROC it leads to.

The AUROC uses the suite's anomaly labels, so it is for studying the label-free criterion, never for choosing:
`vae train` sees only the held-out likelihood. Every rung of the ladder is fitted (selection stops a family
early). Example: `.venv/bin/python benchmarks/anomaly_candidates.py --problems s-curve-12d --latents 1,2,4,8`.
`--closed-form` fits only linear models, in closed form (probabilistic PCA, unshrunk and shrunk, as
training/ppca.py starts them), e.g. `--closed-form --problems digit-2 --latents 8,16,32`.
`--evidence` compares, for the linear family only and in closed form, the latent that Minka's (2000) Bayesian
evidence for PCA picks from the training rows' spectrum with the one the held-out likelihood picks, e.g.
`--evidence --problems digit-2 --latents 1,2,3,4,8,16,32`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy.stats import trim_mean

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anomaly_common import auroc, parse_overrides, set_threads  # noqa: E402
from anomaly_suite import PROBLEMS, Problem  # noqa: E402
from sklearn.covariance import ledoit_wolf_shrinkage  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from training.data import load_dataset  # noqa: E402
from training.distributed import World  # noqa: E402
from training.model import (
    VAE,  # noqa: E402
    ModelConfig,  # noqa: E402
)
from training.plan import Candidate, TrainingPlan, choose_capacity, default_noise, plan_training  # noqa: E402
from training.ppca import initialise_linear_vae  # noqa: E402
from training.train import (  # noqa: E402
    fit_candidate,
    heldout_bounds,
    preprocess,
    raw_log_jacobian,
    selection_folds,
    to_model_tensor,
)
from training.train_config import TrainConfig  # noqa: E402


def digit_problem(digit: int, seed: int) -> Problem:
    """anomaly_digits.py's one-vs-rest problem for one normal class, as (N, 1, 8, 8) images."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)
    images = x_train[y_train == digit].reshape(-1, 1, 8, 8).astype(np.float32)
    return Problem(
        f"digit-{digit}", images, x_test.reshape(-1, 1, 8, 8).astype(np.float32), (y_test != digit).astype(int), ""
    )


@dataclass
class Setup:
    """One problem as selection sees it: its folds and the test rows, in model space."""

    problem: Problem
    folds: list[tuple[torch.Tensor, torch.Tensor]]
    x_train: torch.Tensor  # the final fit's training rows
    x_test: torch.Tensor
    input_shape: list[int]
    plan: TrainingPlan
    log_jacobian: float

    def model_config(self, cand: Candidate) -> ModelConfig:
        return ModelConfig(
            input_shape=self.input_shape,
            latent_dim=cand.latent_dim,
            hidden=list(cand.hidden),
            likelihood=self.plan.likelihood,
            noise=cand.noise,
        )


def setup(name: str, config: TrainConfig, workdir: Path) -> Setup:
    problem = digit_problem(int(name[6:]), config.seed) if name.startswith("digit-") else PROBLEMS[name](config.seed)
    npy = workdir / f"{name}.npy"
    np.save(npy, problem.x_train.astype(np.float32))
    dataset = load_dataset(str(npy))
    plan = plan_training(replace(config, data=str(npy)), dataset)
    pre = preprocess(dataset, plan.train_rows, plan.likelihood, plan.scaling)
    n_features = int(np.prod(dataset.input_shape))
    folds = [
        (to_model_tensor(dataset.x[tr], pre), to_model_tensor(dataset.x[ho], pre))
        for tr, ho in selection_folds(plan, config.seed)
    ]
    log_jacobian = raw_log_jacobian(plan.likelihood, pre, n_features)
    x_train = to_model_tensor(dataset.x[plan.train_rows], pre)
    x_test = to_model_tensor(problem.x_test, pre)
    return Setup(problem, folds, x_train, x_test, list(dataset.input_shape), plan, log_jacobian)


def closed_form_study(name: str, config: TrainConfig, latents: list[int], workdir: Path) -> None:
    """Probabilistic PCA fitted in closed form on each fold (no gradient step), unshrunk and Ledoit-Wolf-shrunk:
    its held-out log-likelihood (L_16 is exact for it) and test AUROC, and the test AUROC of the same fit to
    the final fit's training rows (what `vae train` would serve if fine-tuning kept the start)."""
    s = setup(name, config, workdir)
    for latent in latents:
        for shrink in (False, True):
            rows, aurocs = [], []
            for x_train, x_held in s.folds:
                model = VAE(s.model_config(Candidate([], latent)))
                initialise_linear_vae(model, x_train, shrink=shrink)
                rows.append(heldout_bounds(model, x_held, config.seed + 3, s.log_jacobian))
                scores = -heldout_bounds(model, s.x_test, config.seed + 5, s.log_jacobian)
                aurocs.append(auroc(s.problem.labels, scores))
            held = np.concatenate(rows)
            final = VAE(s.model_config(Candidate([], latent)))
            initialise_linear_vae(final, s.x_train, shrink=shrink)
            final_auroc = auroc(s.problem.labels, -heldout_bounds(final, s.x_test, config.seed + 5, s.log_jacobian))
            print(
                f"{name}: closed-form PPCA, latent {latent}, {'Ledoit-Wolf' if shrink else 'unshrunk'}: held-out "
                f"log-likelihood {held.mean():.3f} (row sd {held.std(ddof=1):.2f}), test AUROC {np.mean(aurocs):.4f}; "
                f"fitted to the {len(s.x_train)} training rows: test AUROC {final_auroc:.4f}",
                flush=True,
            )


def covariance_spectrum(x: torch.Tensor, shrink: bool) -> np.ndarray:
    """The D eigenvalues of x's (N, *shape) sample covariance (N − 1), largest first, optionally shrunk as
    training/ppca.py shrinks them (Ledoit-Wolf: each moves towards their mean)."""
    rows = x.reshape(len(x), -1).double().numpy()
    spectrum = np.linalg.svd(rows - rows.mean(0), compute_uv=False) ** 2 / (len(rows) - 1)
    spectrum = np.concatenate([spectrum, np.zeros(rows.shape[1] - len(spectrum))])
    if not shrink:
        return spectrum
    alpha = float(ledoit_wolf_shrinkage(rows))
    return (1 - alpha) * spectrum + alpha * spectrum.mean()


def evidence_dimension(spectrum: np.ndarray, n: int, approximation: str = "laplace") -> int:
    """The rank k in [1, D − 1] that maximises Minka's (2000) evidence for PPCA given N rows' spectrum.

    "laplace" is scikit-learn's `_assess_dimension` (what `PCA(n_components="mle")` maximises); "bic" is the
    paper's cruder BIC form, −N/2 Σ_{j≤k} ln λ_j − N(D − k)/2 ln v − (m + k)/2 ln N, m = Dk − k(k + 1)/2.
    """
    from sklearn.decomposition._pca import _assess_dimension

    d = len(spectrum)
    evidence = []
    for k in range(1, d):
        v = spectrum[k:].mean()
        # A tail of exactly constant features (a class's blank pixels) has v = 0 and an unbounded evidence at
        # k = the rank; scikit-learn floors v at 1e-15 and so picks the rank itself. Here that k is left out.
        if spectrum[k - 1] < 1e-15 or v < 1e-15:
            evidence.append(-np.inf)
        elif approximation == "bic":
            m = d * k - k * (k + 1) / 2
            evidence.append(-n / 2 * np.log(spectrum[:k]).sum() - n * (d - k) / 2 * np.log(v) - (m + k) / 2 * np.log(n))
        else:
            try:
                evidence.append(_assess_dimension(spectrum, k, n))
            except ValueError:  # a kept eigenvalue tied with a discarded one (shrunk zeros): log(0), undefined
                evidence.append(-np.inf)
    return 1 + int(np.argmax(evidence))


def evidence_study(name: str, config: TrainConfig, latents: list[int], workdir: Path) -> None:
    """Closed-form shrunk PPCA (what linear candidates start at): the latent Minka's evidence picks from the model-space
    spectrum of the final fit's training rows (and of every non-calibration row), against the one the held-out L_16
    picks over `latents` (best, and the one-SE rule within the linear family), with each pick's test AUROC."""
    s = setup(name, config, workdir)
    n_features = int(np.prod(s.input_shape))
    latents = [d for d in latents if d < n_features]  # the ladder stops below the feature count
    # Every non-calibration row: the validation split's fold plus its training rows, or the k folds' held-out parts.
    every = torch.cat([s.folds[0][0], s.folds[0][1]]) if len(s.folds) == 1 else torch.cat([h for _, h in s.folds])
    unshrunk = covariance_spectrum(s.x_train, False)
    varying = unshrunk[unshrunk > 1e-10 * unshrunk[0]]  # constant features (blank pixels) break isotropic noise
    n = len(s.x_train)
    picks = {
        "evidence (Laplace), train rows, unshrunk": evidence_dimension(unshrunk, n),
        "evidence (Laplace), train rows, shrunk": evidence_dimension(covariance_spectrum(s.x_train, True), n),
        "evidence (Laplace), train rows, varying subspace": evidence_dimension(varying, n),
        "evidence (BIC), train rows, unshrunk": evidence_dimension(unshrunk, n, "bic"),
        f"evidence (Laplace), all {len(every)} non-calibration rows, unshrunk": evidence_dimension(
            covariance_spectrum(every, False), len(every)
        ),
        f"evidence (Laplace), all {len(every)} non-calibration rows, shrunk": evidence_dimension(
            covariance_spectrum(every, True), len(every)
        ),
    }
    if n >= n_features:  # the private function's use, checked against the public estimator
        rows_2d = s.x_train.reshape(n, -1).double().numpy()
        sklearn_mle = PCA(n_components="mle", svd_solver="full").fit(rows_2d).n_components_
        print(f"{name}: sklearn PCA(n_components='mle') on the train rows: {sklearn_mle}", flush=True)
    rows = []
    for latent in latents:
        held = []
        for x_train, x_held in s.folds:
            model = VAE(s.model_config(Candidate([], latent)))
            initialise_linear_vae(model, x_train)
            held.append(heldout_bounds(model, x_held, config.seed + 3, s.log_jacobian))
        rows.append(np.concatenate(held))
    candidates = [Candidate([], d) for d in latents]
    picks["held-out L_16, best"] = latents[choose_capacity(candidates, rows, "best")]
    picks["held-out L_16, one-SE"] = latents[choose_capacity(candidates, rows, "one-se")]
    for latent, r in zip(latents, rows, strict=True):
        print(f"{name}: linear {latent}: held-out L_16 {r.mean():.3f} (row sd {r.std(ddof=1):.2f})", flush=True)
    aurocs: dict[int, float] = {}
    for latent in sorted(set(picks.values())):
        final = VAE(s.model_config(Candidate([], latent)))
        initialise_linear_vae(final, s.x_train)
        aurocs[latent] = auroc(s.problem.labels, -heldout_bounds(final, s.x_test, config.seed + 5, s.log_jacobian))
    for how, latent in picks.items():
        print(f"{name}: {how}: latent {latent}, test AUROC {aurocs[latent]:.4f} (closed form, {len(s.x_train)} rows)")


def study(name: str, config: TrainConfig, candidates: list[Candidate], workdir: Path) -> None:
    s = setup(name, config, workdir)
    problem, folds, x_test, plan, log_jacobian = s.problem, s.folds, s.x_test, s.plan, s.log_jacobian
    # Each width gets the noise `vae train` would give it on this problem (or --set noise=...).
    candidates = [replace(c, noise=default_noise(config, c.hidden, plan.scaling)) for c in candidates]
    world = World(0, 1, torch.device("cpu"))
    results = []
    for cand in candidates:
        cfg = s.model_config(cand)
        started = time.perf_counter()
        fits = fit_candidate(cfg, folds, config, plan, log_jacobian, world)
        held_rows = [r for _, r in fits]
        aurocs = [
            auroc(problem.labels, -heldout_bounds(f.model, x_test, config.seed + 5, log_jacobian)) for f, _ in fits
        ]
        epochs = [f.result.epochs_run for f, _ in fits]
        rows = np.concatenate(held_rows)
        results.append((cand, rows))
        print(
            f"{name}: {cand.label}: held-out L_16 {rows.mean():.3f} (row sd {rows.std(ddof=1):.2f}, "
            f"median {np.median(rows):.3f}, 10%-trimmed {trim_mean(rows, 0.1):.3f}), "
            f"test AUROC {np.mean(aurocs):.4f}, epochs {epochs}, {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    best_cand, best_rows = max(results, key=lambda r: r[1].mean())
    for cand, rows in results:
        diff = best_rows - rows
        se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        print(f"{name}: {cand.label}: {diff.mean():.3f} below {best_cand.label}, paired SE {se:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", default="blobs,swiss-roll-20d,s-curve-12d")
    parser.add_argument("--latents", default="1,2,4,8,16")
    parser.add_argument("--widths", default="linear,128-128", help="comma-separated; hyphens inside a width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--closed-form", action="store_true", help="linear models in closed form only (PPCA, unshrunk and shrunk)"
    )
    parser.add_argument(
        "--evidence", action="store_true", help="linear family in closed form: Minka's evidence against held-out L_16"
    )
    args = parser.parse_args()
    set_threads(1)
    config = TrainConfig(seed=args.seed, progress=False, **parse_overrides(args.set))
    widths = [[] if w == "linear" else [int(v) for v in w.split("-")] for w in args.widths.split(",")]
    candidates = [Candidate(w, int(d)) for w in widths for d in args.latents.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.problems.split(","):
            if args.evidence:
                evidence_study(name, config, [int(d) for d in args.latents.split(",")], Path(tmp))
            elif args.closed_form:
                closed_form_study(name, config, [int(d) for d in args.latents.split(",")], Path(tmp))
            else:
                study(name, config, candidates, Path(tmp))


if __name__ == "__main__":
    main()
