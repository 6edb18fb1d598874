"""What `vae train` does when a flag is left unset: choices made from the data's size, each with its reason.

No torch here: the plan is a function of the row count, the features and the flags. Training then follows
it; the plan's notes are printed and kept in the manifest, so a user sees what was chosen for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from service.core.scoring import min_fpr
from training.data import Dataset
from training.train_config import TrainConfig

DEFAULT_FPR = 0.01  # the false-alarm rate a default threshold aims at
DEFAULT_CALIBRATION_FRACTION = 0.1
# Without --calibration-fraction the calibration split may grow up to this share of the rows, so that
# small data sets still support DEFAULT_FPR or come as close to it as they can.
MAX_CALIBRATION_FRACTION = 0.25
# Latent sizes compared by held-out L_K when --latent-dim is unset. 3 is on it because a curved 2-d surface
# with a thickness needs it: on an S-curve in 12-d an MLP at latent 3 scored test AUROC 0.95, at 4 0.81.
LATENT_LADDER = (1, 2, 3, 4, 8, 16, 32)
DEFAULT_CONV_HIDDEN = [32, 64]
# Hidden layers of the default MLP: four for a standardised table, two for pixels. On the suite's swiss roll and
# S-curve two layers of 128 (with a variance per feature) fitted the surface less closely (test AUROC 0.807 and
# 0.988) than four (0.941 and 0.997), at up to twice the training time. On pixels four fitted worse: digits'
# bernoulli MLP reached held-out L_16 -23.85 nats against -23.40 with two (docs/benchmark-anomaly.md).
TABLE_MLP_DEPTH, PIXEL_MLP_DEPTH = 4, 2
# Training length in gradient steps, turned into epochs for the data's size: a 20-row table and a million-row
# one both get enough steps to converge, and early stopping waits a comparable number of steps.
MAX_STEPS = 8000
PATIENCE_STEPS = 300
# Non-linear models improve in long slow stretches: with 200 steps' patience an MLP on an S-curve in 12-d stopped
# before its third latent had learnt the curve's thickness (held-out L_16 14.26, test AUROC 0.78); with 800 it
# reached 14.98 and 0.95. Linear models converge sooner: on a digit class 800 steps gave the same held-out L.
NONLINEAR_PATIENCE_STEPS = 800
MIN_EPOCHS, MAX_EPOCHS, MIN_PATIENCE = 50, 3000, 10
# Comparing capacities: nearly the final fit's length. Shorter runs (3000 steps) under-fitted the MLPs and
# ranked a linear model first on a swiss roll that an MLP fits far better.
SELECTION_MAX_STEPS, SELECTION_PATIENCE_STEPS = 6000, 200


class ConfigError(ValueError):
    """Options that cannot work together on this data; raised before training starts."""


@dataclass(frozen=True)
class Candidate:
    """One model capacity to try: layer widths ([] is linear), latent size, and a gaussian decoder's noise."""

    hidden: list[int]
    latent_dim: int
    noise: str = "shared"  # ModelConfig.noise; bernoulli decoders ignore it

    def applied_to(self, model_config):
        """A training.model.ModelConfig with this candidate's widths, latent size and noise (no torch import here)."""
        return replace(model_config, hidden=list(self.hidden), latent_dim=self.latent_dim, noise=self.noise)

    @property
    def label(self) -> str:
        widths = ",".join(map(str, self.hidden)) if self.hidden else "linear"
        return f"hidden {widths}, latent {self.latent_dim}"


@dataclass
class TrainingPlan:
    likelihood: str
    scaling: str  # "range" (one offset and scale for every feature) or "standard" (per feature)
    train_rows: np.ndarray
    val_rows: np.ndarray
    cal_rows: np.ndarray
    fpr: float  # the calibration's effective false-alarm rate
    fpr_note: str | None  # why it differs from the default, or None
    batch_size: int
    epochs: int
    patience: int  # linear models'
    nonlinear_patience: int  # MLPs' and conv nets'
    families: list[list[Candidate]]  # each family's candidates in ladder order; one candidate: nothing to choose
    notes: list[str] = field(default_factory=list)  # one line per choice made for the user

    @property
    def selects(self) -> bool:
        return sum(len(f) for f in self.families) > 1


def split_indices(
    n: int, val_fraction: float, calibration_fraction: float, seed: int, n_calibration: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded shuffle into (train, validation, calibration) row indices, each non-empty."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * val_fraction))
    n_cal = n_calibration if n_calibration is not None else max(1, round(n * calibration_fraction))
    if n - n_val - n_cal < 1:
        raise ConfigError(
            f"{n} rows leave none for training after --val-fraction {val_fraction} and "
            f"--calibration-fraction {calibration_fraction}"
        )
    return np.sort(order[n_val + n_cal :]), np.sort(order[:n_val]), np.sort(order[n_val : n_val + n_cal])


def rows_for_fpr(fpr: float) -> int:
    """Calibration rows needed before a threshold can promise `fpr`: min_fpr(n) <= fpr."""
    return math.ceil(1.0 / fpr - 1.0 - 1e-9)


def calibration_size(n: int, config: TrainConfig) -> int:
    if config.calibration_fraction is not None:
        return max(1, round(n * config.calibration_fraction))
    base = max(1, round(n * DEFAULT_CALIBRATION_FRACTION))
    wanted = rows_for_fpr(config.fpr if config.fpr is not None else DEFAULT_FPR)
    return max(base, min(wanted, math.floor(n * MAX_CALIBRATION_FRACTION)))


def effective_fpr(config: TrainConfig, n_cal: int) -> tuple[float, str | None]:
    """The rate the threshold is set for. An explicit --fpr the split cannot support is an error; the default
    falls back to the smallest rate the split supports, 1 / (n + 1), and says why."""
    supported = min_fpr(n_cal)
    if config.fpr is not None:
        if config.fpr < supported:
            raise ConfigError(
                f"--fpr {config.fpr:g} needs at least {rows_for_fpr(config.fpr)} calibration rows; "
                f"the calibration split has {n_cal}: raise --calibration-fraction or --fpr"
            )
        return config.fpr, None
    if DEFAULT_FPR >= supported:
        return DEFAULT_FPR, None
    return supported, (
        f"false-alarm rate {supported:.4g} instead of {DEFAULT_FPR:g}: the {n_cal} calibration rows support "
        f"no smaller rate (1/{n_cal + 1}); {DEFAULT_FPR:g} needs {rows_for_fpr(DEFAULT_FPR)}"
    )


def default_width(n_features: int) -> int:
    """Hidden width: 128 up to 64 features, 256 beyond. Narrower MLPs fitted an S-curve in 12-d far worse
    (AUROC 0.75 with 64,32 against 0.985 with 128,128: docs/defaults.md)."""
    return 128 if n_features <= 64 else 256


def latent_ladder(n_features: int) -> list[int]:
    return [d for d in LATENT_LADDER if d < n_features] or [1]


def default_noise(config: TrainConfig, hidden: list[int], scaling: str) -> str:
    """A gaussian decoder's noise when --noise is unset: one variance shared by every feature for a linear model
    (probabilistic PCA, fitted in closed form) and for pixels; one per feature for a non-linear model of a
    standardised table.

    Why per feature there: standardising divides each feature by its own spread, so noise that is alike on every
    feature in the user's units is not alike after it (on the suite's swiss roll the noise variances span 10x),
    and one shared variance then costs the MLP the likelihood it needs to be chosen (docs/benchmark-anomaly.md).
    A linear model absorbs those differences into its extra latents; pixels share one range, and near-constant
    pixels given their own tiny variance would dominate the score.
    """
    if config.noise is not None:
        return config.noise
    return "diagonal" if hidden and scaling == "standard" else "shared"


def candidate_families(config: TrainConfig, n_features: int, scaling: str) -> list[list[Candidate]]:
    """Unset --latent-dim: the ladder; unset --hidden: a linear model and an MLP, each its own family."""
    latents = [config.latent_dim] if config.latent_dim is not None else latent_ladder(n_features)
    if config.hidden is not None:
        widths = [list(config.hidden)]
    elif config.arch == "conv":
        widths = [DEFAULT_CONV_HIDDEN]
    else:
        depth = TABLE_MLP_DEPTH if scaling == "standard" else PIXEL_MLP_DEPTH
        widths = [[], [default_width(n_features)] * depth]
    return [[Candidate(w, d, default_noise(config, w, scaling)) for d in latents] for w in widths]


def paired_gaps(rows: list[np.ndarray]) -> list[tuple[float, float]]:
    """For each candidate, (how far its mean held-out L_K is below the best candidate's, the standard error of
    that gap). Every candidate is scored on the same held-out rows, so the gap's error comes from the per-row
    differences: far smaller than either mean's own spread, since rows that are hard for one are hard for all."""
    best = int(np.argmax([r.mean() for r in rows]))
    gaps = []
    for r in rows:
        diff = rows[best] - r
        se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
        gaps.append((float(diff.mean()), se))
    return gaps


def choose_capacity(candidates: list[Candidate], rows: list[np.ndarray], rule: str) -> int:
    """The index of the capacity to keep, from each candidate's held-out L_K per row.

    "best": the highest mean. "one-se": the one-standard-error rule (Breiman et al. 1984; Hastie, Tibshirani
    and Friedman, ESL 7.10): of the candidates whose mean is within one paired standard error of the best,
    the smallest latent, and at equal latent the linear model. A gap the held-out rows cannot tell from noise
    is no reason for a latent that can also explain anomalies.
    """
    means = [r.mean() for r in rows]
    if rule == "best":
        return int(np.argmax(means))
    close = [i for i, (gap, se) in enumerate(paired_gaps(rows)) if gap <= se]
    return min(close, key=lambda i: (candidates[i].latent_dim, len(candidates[i].hidden), -means[i]))


def patience_steps(hidden: list[int], selecting: bool) -> int:
    """Early stopping's patience in steps for a model with these hidden widths ([] is linear)."""
    if hidden:
        return NONLINEAR_PATIENCE_STEPS
    return SELECTION_PATIENCE_STEPS if selecting else PATIENCE_STEPS


def schedule(
    config: TrainConfig, n_train: int, max_steps: int = MAX_STEPS, patience_steps: int = PATIENCE_STEPS
) -> tuple[int, int, int]:
    """(batch size, epochs, patience) for n_train rows, each unless the flag set it."""
    batch = config.batch_size or min(n_train, max(16, min(128, n_train // 8)))
    steps_per_epoch = math.ceil(n_train / batch)
    epochs = config.epochs or min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(max_steps / steps_per_epoch)))
    patience = config.patience or max(MIN_PATIENCE, math.ceil(patience_steps / steps_per_epoch))
    return batch, epochs, patience


NOISE_WORDS = {"shared": "one noise variance for all features", "diagonal": "one noise variance per feature"}


def noise_note(families: list[list[Candidate]]) -> str:
    """The plan's words for the noise of each family, e.g. "one noise variance for all features (linear models),
    one noise variance per feature (non-linear models)"."""
    kinds = {("linear" if f[0].hidden == [] else "non-linear"): f[0].noise for f in families}
    words = {noise: NOISE_WORDS.get(noise, "a noise variance per feature computed from z") for noise in kinds.values()}
    if len(set(kinds.values())) == 1:
        return next(iter(words.values()))
    return ", ".join(f"{words[noise]} ({kind} models)" for kind, noise in kinds.items())


def plan_training(config: TrainConfig, dataset: Dataset) -> TrainingPlan:
    n, n_features = len(dataset.x), int(np.prod(dataset.input_shape))
    likelihood = config.likelihood or dataset.default_likelihood
    pixels = dataset.value_range is not None or len(dataset.input_shape) == 3
    scaling = config.scaling or ("range" if pixels else "standard")
    n_cal = calibration_size(n, config)
    val_fraction = config.val_fraction
    train_rows, val_rows, cal_rows = split_indices(n, val_fraction, 0.0, config.seed, n_calibration=n_cal)
    fpr, fpr_note = effective_fpr(config, len(cal_rows))
    batch, epochs, patience = schedule(config, len(train_rows))
    nonlinear_patience = schedule(config, len(train_rows), patience_steps=NONLINEAR_PATIENCE_STEPS)[2]
    families = candidate_families(config, n_features, scaling)
    if config.arch == "conv" and len(dataset.input_shape) != 3:
        raise ConfigError(
            f"--arch conv needs data shaped C x H x W; {dataset.source} has rows shaped {list(dataset.input_shape)}"
        )
    notes = [
        f"{n} rows: {len(train_rows)} train, {len(val_rows)} validation, {len(cal_rows)} calibration",
        f"likelihood {likelihood}"
        + (f", {noise_note(families)}" if likelihood == "gaussian" else "")
        + f", {scaling} scaling; batch {batch}, up to {epochs} epochs, patience {patience}"
        + (f" ({nonlinear_patience} for non-linear models)" if nonlinear_patience != patience else ""),
    ]
    if fpr_note:
        notes.append(fpr_note)
    return TrainingPlan(
        likelihood=likelihood,
        scaling=scaling,
        train_rows=train_rows,
        val_rows=val_rows,
        cal_rows=cal_rows,
        fpr=fpr,
        fpr_note=fpr_note,
        batch_size=batch,
        epochs=epochs,
        patience=patience,
        nonlinear_patience=nonlinear_patience,
        families=families,
        notes=notes,
    )
