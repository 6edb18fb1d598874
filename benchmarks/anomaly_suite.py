"""A public tabular anomaly suite: our VAE with `vae train`'s defaults against IsolationForest, PCA, kNN and
PyOD's VAE, on problems built only from scikit-learn's bundled data and generators (nothing is downloaded).

Every problem has a fixed seed, a training split of normal rows only and a test split of normal and anomalous
rows. Every method is fitted on the same training rows and scores the same test rows; the score is AUROC.
The VAE gets the training rows as a user would give them — a float32 .npy, (N, D) for tables and
(N, 1, 8, 8) for digits — and is trained with no flags. Prints the tables and writes them, with the date and
the machine, to their section of docs/benchmark-anomaly.md.

    .venv/bin/python benchmarks/anomaly_suite.py [--quick] [--problems blobs,wine-small] [--seed 0] [--out '']

Target (issue 12): the VAE's mean AUROC is at least the best peer's mean, and on no problem is it more than
0.05 below the best peer there.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from scipy.stats import ortho_group
from sklearn.datasets import (
    load_breast_cancer,
    load_digits,
    load_wine,
    make_blobs,
    make_s_curve,
    make_swiss_roll,
)
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anomaly_common import (  # noqa: E402
    KNN_K,
    PCA_VARIANCE,
    REFERENCE_K,
    REQUEST_ROWS,
    TIMING_PASSES,
    add_common_arguments,
    auroc,
    describe_overrides,
    fmt,
    fmt_rate,
    isolation_forest_scores,
    knn_scores,
    machine,
    parse_overrides,
    pca_scores,
    pyod_vae_scores,
    pyod_version,
    score_vae,
    set_threads,
    write_section,
)

SECTION = "suite"
GAP_TOLERANCE = 0.05  # the target: no problem more than this below the best peer there
PEERS = {"isolation_forest": "IsolationForest", "pca": "PCA", "knn": f"kNN (k={KNN_K})", "pyod_vae": "PyOD VAE"}
N_TRAIN, N_TEST_NORMAL, N_TEST_ANOMALY = 1000, 500, 100  # synthetic problems


@dataclass
class Problem:
    name: str
    x_train: np.ndarray  # normal rows only, as given to every method (the VAE gets them as a float32 .npy)
    x_test: np.ndarray
    labels: np.ndarray  # 1 = anomaly
    description: str


def _split(normal: np.ndarray, anomalies: np.ndarray, n_train: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first n_train normal rows train; the rest and the anomalies test (rows already in random order)."""
    x_test = np.concatenate([normal[n_train:], anomalies])
    labels = np.concatenate([np.zeros(len(normal) - n_train, int), np.ones(len(anomalies), int)])
    return normal[:n_train].astype(np.float32), x_test.astype(np.float32), labels


def _embed(points: np.ndarray, dim: int, noise: float, rng: np.random.Generator, rotation: np.ndarray) -> np.ndarray:
    """Points in a few dimensions -> `dim` dimensions: zero-padded, rotated, plus isotropic Gaussian noise."""
    padded = np.zeros((len(points), dim))
    padded[:, : points.shape[1]] = points
    return padded @ rotation.T + noise * rng.standard_normal((len(points), dim))


def blobs(seed: int) -> Problem:
    """Five Gaussian clusters in 10 dimensions; anomalies half between two clusters, half uniform in the box."""
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_TEST_NORMAL
    normal, _, centers = make_blobs(
        n_samples=n,
        n_features=10,
        centers=5,
        cluster_std=1.0,
        center_box=(-8, 8),
        random_state=seed,
        return_centers=True,
    )
    half = N_TEST_ANOMALY // 2
    pairs = np.array([rng.choice(len(centers), 2, replace=False) for _ in range(half)])
    t = rng.uniform(0.35, 0.65, (half, 1))
    between = t * centers[pairs[:, 0]] + (1 - t) * centers[pairs[:, 1]] + 0.5 * rng.standard_normal((half, 10))
    low, high = normal.min(axis=0), normal.max(axis=0)
    uniform = rng.uniform(low, high, (N_TEST_ANOMALY - half, 10))
    return Problem(
        "blobs",
        *_split(normal, np.concatenate([between, uniform]), N_TRAIN),
        "make_blobs: 5 clusters (std 1) in 10-d; anomalies: half between two cluster centres "
        "(t ∈ [0.35, 0.65], + N(0, 0.5²)), half uniform in the normal rows' bounding box",
    )


def swiss_roll(seed: int) -> Problem:
    """A swiss roll rotated into 20 dimensions; anomalies pushed off the surface: half along the surface normal
    (inside the roll's 3-d subspace), half out of the subspace."""
    rng = np.random.default_rng(seed)
    dim, n = 20, N_TRAIN + N_TEST_NORMAL
    rotation = ortho_group.rvs(dim, random_state=seed)
    normal3, _ = make_swiss_roll(n, noise=0.3, random_state=seed)
    base, t = make_swiss_roll(N_TEST_ANOMALY, noise=0.0, random_state=seed + 1)
    half = N_TEST_ANOMALY // 2
    # The roll is (t cos t, h, t sin t); its normal in the x-z plane is (-(sin t + t cos t), 0, cos t - t sin t).
    normals = np.stack([-(np.sin(t) + t * np.cos(t)), np.zeros_like(t), np.cos(t) - t * np.sin(t)], axis=1)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    push = rng.uniform(1.5, 3.0, (N_TEST_ANOMALY, 1)) * rng.choice([-1.0, 1.0], (N_TEST_ANOMALY, 1))
    scale = normal3.std()  # one scale for every axis keeps the roll's shape
    on_surface = np.zeros((N_TEST_ANOMALY, dim))
    on_surface[:, :3] = base
    on_surface[:half, :3] += push[:half] * normals[:half]
    outward = rng.standard_normal((N_TEST_ANOMALY - half, dim - 3))
    on_surface[half:, 3:] = push[half:] * outward / np.linalg.norm(outward, axis=1, keepdims=True)
    noise = 0.05
    normal = _embed(normal3 / scale, dim, noise, rng, rotation)
    anomalies = on_surface / scale @ rotation.T + noise * rng.standard_normal((N_TEST_ANOMALY, dim))
    return Problem(
        "swiss-roll-20d",
        *_split(normal, anomalies, N_TRAIN),
        "make_swiss_roll (noise 0.3) scaled to unit std, zero-padded to 20-d, randomly rotated, + N(0, 0.05²); "
        "anomalies: roll points pushed 1.5–3 roll units (turns are 2π apart) off the surface, half along "
        "its normal inside the roll's 3-d subspace, half out of that subspace",
    )


def s_curve(seed: int) -> Problem:
    """An S-curve rotated into 12 dimensions; anomalies pushed off the surface along its normal."""
    rng = np.random.default_rng(seed)
    dim, n = 12, N_TRAIN + N_TEST_NORMAL
    rotation = ortho_group.rvs(dim, random_state=seed + 2)
    normal3, _ = make_s_curve(n, noise=0.05, random_state=seed)
    base, t = make_s_curve(N_TEST_ANOMALY, noise=0.0, random_state=seed + 1)
    # The curve is (sin t, h, sign(t)(cos t - 1)); its unit normal in the x-z plane is (sign(t) sin t, 0, cos t).
    normals = np.stack([np.sign(t) * np.sin(t), np.zeros_like(t), np.cos(t)], axis=1)
    push = rng.uniform(0.25, 0.5, (N_TEST_ANOMALY, 1)) * rng.choice([-1.0, 1.0], (N_TEST_ANOMALY, 1))
    noise = 0.03
    normal = _embed(normal3, dim, noise, rng, rotation)
    anomalies = _embed(base + push * normals, dim, noise, rng, rotation)
    return Problem(
        "s-curve-12d",
        *_split(normal, anomalies, N_TRAIN),
        "make_s_curve (noise 0.05), zero-padded to 12-d, randomly rotated, + N(0, 0.03²); anomalies: "
        "curve points pushed 0.25–0.5 (the curve's radius is 1) off the surface along its normal",
    )


def correlated_gaussian(seed: int) -> Problem:
    """A 20-d Gaussian with a random covariance whose spectrum decays from 10 to 0.01; anomalies are normal draws
    shifted 4–6 standard deviations along one of the three smallest-variance directions."""
    rng = np.random.default_rng(seed)
    dim, n = 20, N_TRAIN + N_TEST_NORMAL
    eigenvalues = np.logspace(1, -2, dim)
    basis = ortho_group.rvs(dim, random_state=seed + 3)  # columns are the eigenvectors
    draw = lambda m: (rng.standard_normal((m, dim)) * np.sqrt(eigenvalues)) @ basis.T  # noqa: E731
    normal = draw(n)
    which = rng.integers(dim - 3, dim, N_TEST_ANOMALY)
    shift = rng.uniform(4, 6, N_TEST_ANOMALY) * rng.choice([-1.0, 1.0], N_TEST_ANOMALY) * np.sqrt(eigenvalues[which])
    anomalies = draw(N_TEST_ANOMALY) + shift[:, None] * basis[:, which].T
    return Problem(
        "correlated-gaussian-20d",
        *_split(normal, anomalies, N_TRAIN),
        "N(0, QΛQᵀ) in 20-d, Q random orthogonal, Λ log-spaced from 10 to 0.01; anomalies: normal draws "
        "shifted ±4–6 std along one of the 3 smallest-eigenvalue directions",
    )


def heavy_tailed_binary(seed: int) -> Problem:
    """4 student-t, 4 lognormal and 8 Bernoulli columns, all driven by one latent factor; anomalies draw the
    Bernoulli columns from an independent factor, so every marginal is unchanged but the dependence is broken."""
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_TEST_NORMAL
    loadings_t = rng.uniform(0.8, 1.5, 4) * rng.choice([-1.0, 1.0], 4)
    loadings_ln = rng.uniform(0.4, 0.8, 4)
    loadings_b = rng.uniform(2.0, 4.0, 8) * rng.choice([-1.0, 1.0], 8)
    offsets_b = rng.uniform(-1.0, 1.0, 8)

    def draw(m: int, independent_binaries: bool) -> np.ndarray:
        factor = rng.standard_normal((m, 1))
        t_cols = factor * loadings_t + 0.5 * rng.standard_t(3, (m, 4))
        ln_cols = np.exp(factor * loadings_ln + 0.5 * rng.standard_normal((m, 4)))
        driver = rng.standard_normal((m, 1)) if independent_binaries else factor
        p = 1 / (1 + np.exp(-(driver * loadings_b + offsets_b)))
        return np.concatenate([t_cols, ln_cols, (rng.random((m, 8)) < p).astype(float)], axis=1)

    return Problem(
        "heavy-tailed-binary",
        *_split(draw(n, False), draw(N_TEST_ANOMALY, True), N_TRAIN),
        "16 columns driven by one N(0, 1) factor: 4 factor + 0.5·t(3), 4 lognormal, 8 Bernoulli "
        "(logistic in the factor); anomalies: the Bernoulli columns follow an independent factor "
        "(same marginals, dependence broken)",
    )


def breast_cancer_small(seed: int) -> Problem:
    """load_breast_cancer: 200 benign rows train; test the other 157 benign rows and 40 malignant ones."""
    rng = np.random.default_rng(seed)
    data = load_breast_cancer()
    benign = rng.permutation(data.data[data.target == 1])
    malignant = rng.permutation(data.data[data.target == 0])[:40]
    return Problem(
        "breast-cancer-200",
        *_split(benign, malignant, 200),
        "load_breast_cancer (30 features): 200 benign rows train; test the other 157 benign and 40 "
        "random malignant rows",
    )


def wine_small(seed: int) -> Problem:
    """load_wine: 50 rows of class 1 train; test its other 21 rows against every row of classes 0 and 2."""
    rng = np.random.default_rng(seed)
    data = load_wine()
    normal = rng.permutation(data.data[data.target == 1])
    others = data.data[data.target != 1]
    return Problem(
        "wine-50",
        *_split(normal, others, 50),
        "load_wine (13 features): 50 rows of class 1 train; test its other 21 rows against all 107 rows "
        "of classes 0 and 2",
    )


def digits_corrupted(seed: int) -> Problem:
    """Clean digits of every class are normal; anomalies are test digits with pixel noise, an occluding block,
    or a flip / rotation."""
    rng = np.random.default_rng(seed)
    data = load_digits()
    x_train, x_test = train_test_split(
        data.images.astype(np.float64), test_size=0.25, stratify=data.target, random_state=seed
    )
    chosen = x_test[rng.choice(len(x_test), 150, replace=False)].copy()
    noisy, occluded, turned = chosen[:50], chosen[50:100], chosen[100:]
    for image in noisy:  # 12 of the 64 pixels replaced by uniform values 0..16
        cells = rng.choice(64, 12, replace=False)
        image.flat[cells] = rng.integers(0, 17, 12)
    for image in occluded:  # a 3 x 3 block of full ink
        r, c = rng.integers(0, 6, 2)
        image[r : r + 3, c : c + 3] = 16.0
    for i, image in enumerate(turned):  # horizontal flip, vertical flip or a quarter turn
        turned[i] = [np.fliplr, np.flipud, np.rot90][i % 3](image)
    x_test_all = np.concatenate([x_test, noisy, occluded, turned])[:, None]
    labels = np.concatenate([np.zeros(len(x_test), int), np.ones(150, int)])
    return Problem(
        "digits-corrupted",
        x_train[:, None].astype(np.float32),
        x_test_all.astype(np.float32),
        labels,
        "load_digits split 75/25 stratified: 1347 clean digits of every class train, as (N, 1, 8, 8); "
        "test the 450 clean test digits and corrupted copies of 150 of them (50 with 12 pixels "
        "replaced by uniform 0..16, 50 with a 3×3 block set to 16, 50 flipped left-right, flipped "
        "up-down or turned 90°)",
    )


PROBLEMS: dict[str, Callable[[int], Problem]] = {
    "blobs": blobs,
    "swiss-roll-20d": swiss_roll,
    "s-curve-12d": s_curve,
    "correlated-gaussian-20d": correlated_gaussian,
    "heavy-tailed-binary": heavy_tailed_binary,
    "breast-cancer-200": breast_cancer_small,
    "wine-50": wine_small,
    "digits-corrupted": digits_corrupted,
}
QUICK = ["blobs", "correlated-gaussian-20d", "wine-50"]


def run_problem(problem: Problem, seed: int, overrides: dict, workdir: Path) -> dict:
    x_train, x_test, labels = problem.x_train, problem.x_test, problem.labels
    started = time.perf_counter()
    row = {
        "problem": problem,
        "vae": score_vae(x_train, x_test, labels, workdir, problem.name, seed, overrides),
        "isolation_forest": auroc(labels, isolation_forest_scores(x_train, x_test, seed)),
        "pca": auroc(labels, pca_scores(x_train, x_test, seed, standardise=True)),
        "knn": auroc(labels, knn_scores(x_train, x_test)),
    }
    peer_started = time.perf_counter()
    row["pyod_vae"] = auroc(labels, pyod_vae_scores(x_train, x_test))
    row["pyod_seconds"] = time.perf_counter() - peer_started
    row["seconds"] = time.perf_counter() - started
    return row


def mean_or_nan(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values and all(np.isfinite(values)) else float("nan")


def summarise(rows: list[dict]) -> dict:
    for r in rows:
        best = max(PEERS, key=lambda m: r[m])
        r["best_peer"], r["best_auroc"] = best, r[best]
        r["gap"] = r["vae"].auroc_default - r[best]  # NaN when the VAE failed
    means = {m: mean_or_nan(r[m] for r in rows) for m in PEERS}
    best_peer = max(PEERS, key=lambda m: means[m])
    return {
        "rows": rows,
        "means": means,
        "vae_mean": mean_or_nan(r["vae"].auroc_default for r in rows),
        "vae_mean_k100": mean_or_nan(r["vae"].auroc_k100 for r in rows),
        "best_peer": best_peer,
        "best_peer_mean": means[best_peer],
        "oracle_mean": mean_or_nan(r["best_auroc"] for r in rows),
        "failed": [r for r in rows if not r["vae"].ok],
        "too_far": [r for r in rows if r["vae"].ok and r["gap"] < -GAP_TOLERANCE],
    }


def verdict(s: dict, n: int, overrides: dict) -> str:
    if s["failed"]:
        errors = sorted({r["vae"].error for r in s["failed"]})
        text = (
            f"**Target not met:** `vae train` with {'these flags' if overrides else 'no flags'} fails on "
            f"{len(s['failed'])} of {n} problems ({', '.join(r['problem'].name for r in s['failed'])}): "
            + "; ".join(f"`{e}`" for e in errors)
            + "."
        )
        trained = [r for r in s["rows"] if r["vae"].ok]
        if trained:
            ours = np.mean([r["vae"].auroc_default for r in trained])
            peer_means = {m: np.mean([r[m] for r in trained]) for m in PEERS}
            best = max(peer_means, key=peer_means.get)
            text += (
                f" On the {len(trained)} problems it trains on, its mean AUROC is {ours:.4f} against "
                f"{peer_means[best]:.4f} for the best peer there ({PEERS[best]})"
                + (
                    "; more than 0.05 below the best peer on "
                    + ", ".join(f"{r['problem'].name} ({r['gap']:+.4f})" for r in s["too_far"])
                    if s["too_far"]
                    else ""
                )
                + "."
            )
        return text
    mean_ok = s["vae_mean"] >= s["best_peer_mean"]
    parts = [
        f"mean AUROC {s['vae_mean']:.4f} {'≥' if mean_ok else '<'} the best peer's mean "
        f"({PEERS[s['best_peer']]}, {s['best_peer_mean']:.4f})",
        "no problem more than 0.05 below the best peer there"
        if not s["too_far"]
        else "more than 0.05 below the best peer on "
        + ", ".join(f"{r['problem'].name} ({r['gap']:+.4f})" for r in s["too_far"]),
    ]
    met = mean_ok and not s["too_far"]
    return f"**Target {'met' if met else 'not met'}:** " + "; ".join(parts) + "."


def render(rows: list[dict], s: dict, args, overrides: dict, total_seconds: float) -> str:
    auroc_lines = [
        "| problem | train rows | features | test normal / anomalous | VAE (served score) | "
        + " | ".join(PEERS.values())
        + " | best peer | VAE − best peer |",
        "|---|---|---|---|---|" + "---|" * len(PEERS) + "---|---|",
    ]
    for r in rows:
        p, v = r["problem"], r["vae"]
        auroc_lines.append(
            f"| {p.name} | {len(p.x_train)} | {int(np.prod(p.x_train.shape[1:]))} | "
            f"{int((p.labels == 0).sum())} / {int(p.labels.sum())} | {fmt(v.auroc_default) if v.ok else 'fails'} | "
            + " | ".join(fmt(r[m]) for m in PEERS)
            + f" | {PEERS[r['best_peer']]} | {fmt(r['gap'], 4) if v.ok else '—'} |"
        )
    auroc_lines.append(
        f"| **mean** | | | | **{fmt(s['vae_mean'])}** | "
        + " | ".join(f"**{fmt(s['means'][m])}**" for m in PEERS)
        + f" | {fmt(s['oracle_mean'])} (best per problem) | |"
    )
    k_lines = [
        f"| problem | served score (manifest) | AUROC served | AUROC at K = {REFERENCE_K} | rows/s served "
        f"| rows/s at K = {REFERENCE_K} "
        "| VAE chosen (hidden / latent) | VAE epochs | VAE train s | VAE train CPU s | PyOD VAE fit s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        v = r["vae"]
        k_lines.append(
            f"| {r['problem'].name} | {v.estimator or '—'} | {fmt(v.auroc_default)} | {fmt(v.auroc_k100)} | "
            f"{fmt_rate(v.rows_per_s_default)} | {fmt_rate(v.rows_per_s_k100)} | {v.capacity or '—'} | "
            f"{v.epochs or '—'} | {v.train_seconds:.1f} | {v.train_cpu_seconds:.1f} | {r['pyod_seconds']:.1f} |"
        )
    k_lines.append(f"| **mean** | | **{fmt(s['vae_mean'])}** | **{fmt(s['vae_mean_k100'])}** | | | | | | | |")
    command = " ".join(
        filter(
            None,
            [
                ".venv/bin/python benchmarks/anomaly_suite.py",
                f"--seed {args.seed}",
                f"--threads {args.threads}" if args.threads != 1 else "",
                f"--problems {','.join(args.problem_names)}" if args.problem_names != list(PROBLEMS) else "",
                describe_overrides(overrides),
            ],
        )
    )
    flags = (
        f"with {describe_overrides(overrides)} (a diagnostic run, not the defaults)" if overrides else "with no flags"
    )
    return "\n".join(
        [
            "## Public tabular suite",
            "",
            f"Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on {machine()}, "
            f"torch threads {args.threads or 'default'}; "
            f"{total_seconds:.0f} s in all. Command: `{command}`.",
            "",
            "Problems, built from scikit-learn's bundled data and generators with seed "
            f"{args.seed} (code: `benchmarks/anomaly_suite.py`). Every method is fitted on the training rows, "
            "which are "
            "all normal, and scores the test rows; the score is AUROC (higher is better).",
            "",
            *[f"- **{r['problem'].name}**: {r['problem'].description}." for r in rows],
            "",
            "Methods:",
            "",
            f"- VAE: `vae train --data PROBLEM.npy --out DIR` {flags}, on the training rows saved as a float32 .npy "
            "((N, D) for tables, (N, 1, 8, 8) for digits). Scored through the exported ONNX graphs with the service's "
            "engine (`VaeEngine.elbo`): the served default score (`scoring.estimator`: −L_K at the calibrated K for "
            "a linear model, whose encoder is the exact posterior, −ELBO_L at the calibrated L for any other).",
            "- IsolationForest: scikit-learn defaults, same seed, raw features; score −score_samples.",
            f"- PCA: standardised features (StandardScaler on the training rows), components explaining "
            f"{PCA_VARIANCE:.0%} of their variance; score the squared reconstruction error.",
            f"- kNN: standardised features; score the mean Euclidean distance to the {KNN_K} nearest training rows.",
            f"- PyOD VAE: `pyod.models.vae.VAE` (pyod {pyod_version()}) with its defaults (verbose=0) on standardised "
            "features; score `decision_function`.",
            "",
            "AUROC:",
            "",
            *auroc_lines,
            "",
            verdict(s, len(rows), overrides),
            "",
            "The VAE's served score and /elbo throughput (test rows per second through `VaeEngine.elbo`, "
            f"{REQUEST_ROWS} rows per call, best of {TIMING_PASSES} passes, on this shared machine: expect ±30% "
            "from run to run):",
            "",
            *k_lines,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", default="", help=f"comma-separated subset of: {', '.join(PROBLEMS)}")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}, and write nothing")
    add_common_arguments(parser)
    args = parser.parse_args()
    names = QUICK if args.quick else [p for p in args.problems.split(",") if p] or list(PROBLEMS)
    unknown = [p for p in names if p not in PROBLEMS]
    if unknown:
        parser.error(f"unknown problems {unknown}; choose from {list(PROBLEMS)}")
    if args.quick:
        args.out = ""
    args.problem_names = names
    overrides = parse_overrides(args.set)
    set_threads(args.threads)

    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            problem = PROBLEMS[name](args.seed)
            row = run_problem(problem, args.seed, overrides, Path(tmp))
            v = row["vae"]
            vae_text = (
                f"VAE ({v.estimator}, {v.capacity}, train {v.train_seconds:.0f} s, CPU {v.train_cpu_seconds:.0f} s) "
                f"{v.auroc_default:.4f}, VAE -L_100 {v.auroc_k100:.4f}"
                if v.ok
                else f"VAE fails: {v.error}"
            )
            print(
                f"{name}: {vae_text}, "
                + ", ".join(f"{PEERS[m]} {row[m]:.4f}" for m in PEERS)
                + f" ({row['seconds']:.0f} s)",
                flush=True,
            )
            rows.append(row)
    s = summarise(rows)
    report = render(rows, s, args, overrides, time.perf_counter() - started)
    print(report)
    if args.out:
        write_section(args.out, SECTION, report)


if __name__ == "__main__":
    main()
