"""`vae train`: data -> preprocessing -> fit -> checkpoint -> model directory."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from service.core.artifact import Artifact, ImageSpec, Preprocessing, TrainingSummary
from training.data import DataError, Dataset, fit_preprocessing, load_dataset
from training.distributed import DeviceError, World, join_world
from training.export import CalibrationPlan, ExportError, export_model_dir, make_checkpoint
from training.loop import FitResult, fit
from training.loss import elbo_terms, importance_weighted_bound
from training.model import VAE, ModelConfig
from training.plan import (
    SELECTION_MAX_STEPS,
    Candidate,
    ConfigError,
    TrainingPlan,
    choose_capacity,
    paired_gaps,
    patience_steps,
    plan_training,
    schedule,
    split_indices,
)
from training.ppca import initialise_linear_vae, is_ppca
from training.report import write_report
from training.train_args import train_parser
from training.train_config import TrainConfig, default_out

__all__ = ["ConfigError", "TrainConfig", "split_indices", "train"]


def preprocess(dataset: Dataset, train_rows: np.ndarray, likelihood: str, scaling: str) -> Preprocessing:
    # Bernoulli scaling maps the data's range onto [0, 1], so it is fitted on every row: a fixed range, not a
    # learned statistic. Gaussian scalings are fitted on the training rows only.
    fit_rows = dataset.x if likelihood == "bernoulli" else dataset.x[train_rows]
    offset, scale = fit_preprocessing(fit_rows, likelihood, dataset.value_range, scaling)
    return Preprocessing(offset=offset, scale=scale)


def to_model_tensor(x_raw: np.ndarray, preprocessing: Preprocessing) -> torch.Tensor:
    flat = x_raw.reshape(len(x_raw), -1).astype(np.float64)
    return torch.from_numpy(preprocessing.to_model(flat).reshape(x_raw.shape).astype(np.float32))


REPORT_SAMPLE_ROWS = 500  # validation rows kept in the model directory for the report's pictures


def image_spec(dataset: Dataset) -> ImageSpec | None:
    """Digits and image folders can be sent and shown as images; other arrays have no known pixel range."""
    shape = dataset.input_shape
    if dataset.value_range is None or len(shape) != 3 or shape[0] not in (1, 3):
        return None
    return ImageSpec(
        channels=shape[0], height=shape[1], width=shape[2], resize=dataset.resized, max_value=dataset.value_range[1]
    )


ACTIVE_UNIT_VARIANCE = 0.01


def active_units(mu: torch.Tensor, threshold: float = ACTIVE_UNIT_VARIANCE) -> int:
    """Latent dimensions whose posterior mean varies over the data: Var_x[mu(x)] > threshold (Burda et al.)."""
    return int((mu.var(dim=0) > threshold).sum())


def beta_at(epoch: int, beta: float, warmup: int) -> float:
    """KL weight for an epoch: a linear ramp from 0 over `warmup` epochs, then beta."""
    return beta if warmup <= 0 else beta * min(1.0, (epoch - 1) / warmup)


def train(config: TrainConfig) -> Artifact | None:
    """Train on config.data and write the model directory config.out.

    Flags left unset are chosen from the data (training/plan.py); when more than one capacity is possible,
    each is fitted and the one with the best held-out L_K is kept. Under torchrun, every process trains on
    its share of the rows and only the main one writes the directory and returns the artifact; the others
    return None.
    """
    config = replace(config, out=config.out or default_out(config.data))  # the manifest records where it went
    dataset = load_dataset(
        config.data,
        columns=config.columns,
        label_column=config.label_column,
        channels=config.channels,
        image_size=tuple(config.image_size) if config.image_size else None,
    )
    plan = plan_training(config, dataset)
    if config.threads:
        torch.set_num_threads(config.threads)
    world = join_world(config.device)
    try:
        # The choices made for the user go to stderr, one line each; stdout keeps the one-line result.
        say = (lambda line: print(line, file=sys.stderr, flush=True)) if world.main else (lambda _: None)
        for note in plan.notes:
            say(f"vae train: {note}")
        return _train(config, dataset, plan, world, say)
    finally:
        world.close()


class ElboObjective(nn.Module):
    """The ELBO's terms as a module's forward, so DistributedDataParallel sees the call and syncs gradients."""

    def __init__(self, vae: VAE, log_jacobian: float) -> None:
        super().__init__()
        self.vae = vae
        self.log_jacobian = log_jacobian

    def forward(self, x: torch.Tensor, eps: torch.Tensor):
        return elbo_terms(self.vae, x, eps, self.log_jacobian)


@dataclass
class Fitted:
    model: VAE
    result: FitResult


def fit_vae(
    model_config: ModelConfig,
    x_train: torch.Tensor,
    x_val: torch.Tensor,
    config: TrainConfig,
    plan: TrainingPlan,
    world: World,
    log_jacobian: float,
    progress: bool,
    keep_last: bool = False,
) -> Fitted:
    """Fit one VAE with early stopping on x_val's ELBO; returns it holding its best weights (with `keep_last`,
    plan.epochs epochs and the last weights: see refit_linear).

    A linear VAE with shared gaussian noise starts at its closed-form maximum-likelihood fit (training/ppca.py).
    """
    torch.manual_seed(config.seed)
    model = VAE(model_config).to(world.device)
    if is_ppca(model):
        # Start at the closed-form optimum; fine-tuning then keeps it unless held-out rows say otherwise.
        initialise_linear_vae(model, x_train)
    latent_dim = model_config.latent_dim
    objective: nn.Module = ElboObjective(model, log_jacobian)
    if world.size > 1:
        device_ids = [world.device.index] if world.device.type == "cuda" else None
        objective = DistributedDataParallel(objective, device_ids=device_ids)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    # Each process draws its own noise; the seed and the world size fix every draw.
    noise = torch.Generator().manual_seed(config.seed + 1 + 7919 * world.rank)
    sampler = DistributedSampler(
        range(len(x_train)), num_replicas=world.size, rank=world.rank, shuffle=True, seed=config.seed
    )

    def batches(epoch: int):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), device=world.device)
        for start in range(0, len(order), plan.batch_size):
            yield x_train[order[start : start + plan.batch_size]]

    def step(batch: torch.Tensor, epoch: int) -> dict[str, float]:
        eps = torch.randn(1, len(batch), latent_dim, generator=noise).to(world.device)
        terms = objective(batch, eps)
        beta = beta_at(epoch, config.beta, config.kl_warmup)
        loss = terms.loss(beta, config.free_bits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {
            "loss": loss.item(),
            "elbo": terms.elbo.mean().item(),
            "reconstruction": terms.reconstruction.mean().item(),
            "kl": terms.kl.mean().item(),
            "beta": beta,
        }

    val_eps = torch.randn(1, len(x_val), latent_dim, generator=torch.Generator().manual_seed(config.seed + 2))
    # Each process validates its share of the rows; the sums are all-reduced, so every process sees the
    # same metrics and stops early at the same epoch.
    val_share = slice(world.rank, None, world.size)
    x_val_share, val_eps_share = x_val[val_share], val_eps[:, val_share].to(world.device)

    def validate() -> dict[str, float]:
        # The same noise every epoch, so that changes in val_elbo come from the weights alone.
        terms = elbo_terms(model, x_val_share, val_eps_share, log_jacobian)
        mu, _ = model.encode(x_val_share)
        n, elbo, rec, kl, *moments = world.sum(
            [
                len(x_val_share),
                terms.elbo.sum().item(),
                terms.reconstruction.sum().item(),
                terms.kl.sum().item(),
                *mu.sum(0).tolist(),
                *mu.pow(2).sum(0).tolist(),
            ]
        )
        mean, mean_sq = torch.tensor(moments[:latent_dim]) / n, torch.tensor(moments[latent_dim:]) / n
        variance = (mean_sq - mean.pow(2)) * n / max(n - 1, 1)  # unbiased, as torch.var
        return {
            "val_elbo": elbo / n,
            "val_reconstruction": rec / n,
            "val_kl": kl / n,
            "active_units": int((variance > ACTIVE_UNIT_VARIANCE).sum()),
        }

    result = fit(
        model,
        batches,
        step,
        validate,
        epochs=plan.epochs,
        patience=plan.patience,
        monitor="val_elbo",
        progress=progress,
        keep_last=keep_last,
    )
    model.load_state_dict(result.best_state)
    return Fitted(model, result)


def refit_linear(
    fitted: Fitted,
    x_train: torch.Tensor,
    x_val: torch.Tensor,
    config: TrainConfig,
    plan: TrainingPlan,
    world: World,
    log_jacobian: float,
) -> tuple[Fitted, str]:
    """A chosen linear model fitted again on the training and validation rows together, and a note saying so.

    Early stopping has done its job once it has said how many epochs of fine-tuning from the closed-form start
    help (its best epoch, often 0). The refit starts at the closed form of every non-calibration row and
    fine-tunes that many epochs: the fit is a deterministic function of the rows, so more rows make a better
    estimate of the same thing, and the calibration rows stay unseen. MLPs are not refitted: their fit depends
    on the random start and the batch order, which a refit without early stopping would not check.
    """
    x_all = torch.cat([x_train, x_val])
    epochs = fitted.result.best_epoch
    model_config = fitted.model.config
    refit = fit_vae(
        model_config, x_all, x_val, config, replace(plan, epochs=epochs), world, log_jacobian, False, keep_last=True
    )
    note = (
        f"refitted linear latent {model_config.latent_dim} on all {len(x_all)} training and validation rows "
        f"(closed form, then {epochs} epochs, the validated fit's best)"
    )
    # The validated fit's record (its held-out ELBO, epochs and history) describes the model selection honestly;
    # the refit has no held-out rows left to report on.
    return Fitted(refit.model, fitted.result), note


SELECTION_IW_SAMPLES = 16  # K of the held-out L_K that compares capacities
SELECTION_FOLDS = 2  # cross-validation folds when the validation split is too small to compare on
MIN_HOLDOUT_ROWS = 64  # a validation split at least this large is used as it is
SELECTION_MAX_TRAIN_ROWS = 4096  # capacities are compared on at most this many training rows, for speed
SELECTION_MAX_HOLDOUT_ROWS = 1024


def heldout_bounds(model: VAE, x: torch.Tensor, seed: int, log_jacobian: float) -> np.ndarray:
    """L_K of each held-out row, in raw-unit nats: the score the service serves, so higher is a better fit."""
    eps = torch.randn(
        SELECTION_IW_SAMPLES, len(x), model.config.latent_dim, generator=torch.Generator().manual_seed(seed)
    )
    model.eval()
    with torch.inference_mode():
        return importance_weighted_bound(model, x, eps.to(x.device), log_jacobian).cpu().numpy().astype(np.float64)


def selection_folds(plan: TrainingPlan, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, held-out rows) pairs: the validation split when it is large enough, else k folds of
    every non-calibration row, so that even a 20-row table compares capacities on all its rows."""
    if len(plan.val_rows) >= MIN_HOLDOUT_ROWS:
        rng = np.random.default_rng(seed)
        train = plan.train_rows
        if len(train) > SELECTION_MAX_TRAIN_ROWS:
            train = np.sort(rng.choice(train, SELECTION_MAX_TRAIN_ROWS, replace=False))
        held = plan.val_rows
        if len(held) > SELECTION_MAX_HOLDOUT_ROWS:
            held = np.sort(rng.choice(held, SELECTION_MAX_HOLDOUT_ROWS, replace=False))
        return [(train, held)]
    rows = np.random.default_rng(seed).permutation(np.concatenate([plan.train_rows, plan.val_rows]))
    folds = np.array_split(rows, min(SELECTION_FOLDS, len(rows)))
    return [
        (np.sort(np.concatenate([f for j, f in enumerate(folds) if j != i])), np.sort(held))
        for i, held in enumerate(folds)
    ]


def fit_candidate(
    model_config: ModelConfig,
    folds: list[tuple[torch.Tensor, torch.Tensor]],
    config: TrainConfig,
    plan: TrainingPlan,
    log_jacobian: float,
    world: World,
) -> list[tuple[Fitted, np.ndarray]]:
    """One capacity fitted on each fold's training rows with selection's budget, and its L_K per held-out row."""
    out = []
    for x_train, x_held in folds:
        patience = patience_steps(model_config.hidden, selecting=True)
        budget = schedule(config, len(x_train), SELECTION_MAX_STEPS, patience)
        sub_plan = replace(plan, **dict(zip(("batch_size", "epochs", "patience"), budget, strict=False)))
        fitted = fit_vae(model_config, x_train, x_held, config, sub_plan, world, log_jacobian, progress=False)
        out.append((fitted, heldout_bounds(fitted.model, x_held, config.seed + 3, log_jacobian)))
    return out


def select_candidate(
    config: TrainConfig,
    dataset: Dataset,
    plan: TrainingPlan,
    preprocessing: Preprocessing,
    model_config: ModelConfig,
    log_jacobian: float,
    world: World,
    say,
) -> tuple[Candidate, list[dict]]:
    """Fit each candidate capacity and compare them by held-out L_K; no labels are used.

    Each family (linear, MLP) climbs its latent ladder and stops at the first size that does not improve on
    the family's best, so a 784-feature table does not pay for every rung. The choice among those tried is
    training.plan.choose_capacity's.
    """
    folds = selection_folds(plan, config.seed)
    local = World(0, 1, world.device)  # every process selects alike; rank 0's choice is shared below
    data = [
        (
            to_model_tensor(dataset.x[tr], preprocessing).to(world.device),
            to_model_tensor(dataset.x[ho], preprocessing).to(world.device),
        )
        for tr, ho in folds
    ]
    candidates: list[Candidate] = []
    tried: list[dict] = []  # each candidate's record for the manifest
    rows: list[np.ndarray] = []  # each candidate's held-out L_K per row, rows in the same order for all
    for family in plan.families:
        best_in_family = -math.inf
        for candidate in family:
            cfg = candidate.applied_to(model_config)
            started = time.perf_counter()
            rows.append(np.concatenate([r for _, r in fit_candidate(cfg, data, config, plan, log_jacobian, local)]))
            score = float(rows[-1].mean())
            candidates.append(candidate)
            tried.append(asdict(candidate) | {"heldout_lk": score})
            say(
                f"vae train: {candidate.label}: held-out L_{SELECTION_IW_SAMPLES} {score:.3f} nats "
                f"({time.perf_counter() - started:.1f} s)"
            )
            if score <= best_in_family:
                break
            best_in_family = score
    best = choose_capacity(candidates, rows, config.selection_rule)
    for entry, gap in zip(tried, paired_gaps(rows), strict=True):
        entry["below_best"], entry["standard_error"] = gap
    best = int(world.sum([best if world.main else 0])[0])
    return candidates[best], tried


def raw_log_jacobian(likelihood: str, preprocessing: Preprocessing, n_features: int) -> float:
    """What turns a model-space density into one in raw units (see Manifest.log_jacobian), summed over the
    features; 0 for bernoulli, whose data are not rescaled densities. A constant, so gradients ignore it."""
    return 0.0 if likelihood == "bernoulli" else -float(preprocessing.log_scale(n_features).sum())


def _train(config: TrainConfig, dataset: Dataset, plan: TrainingPlan, world: World, say) -> Artifact | None:
    preprocessing = preprocess(dataset, plan.train_rows, plan.likelihood, plan.scaling)
    n_features = int(np.prod(dataset.input_shape))
    # Reported ELBOs are densities in raw units.
    log_jacobian = raw_log_jacobian(plan.likelihood, preprocessing, n_features)
    # The data's shape and likelihood; each candidate fills in its capacity and noise (Candidate.applied_to).
    base_config = ModelConfig(
        input_shape=list(dataset.input_shape), likelihood=plan.likelihood, architecture=config.arch
    )
    selection: list[dict] = []
    chosen = plan.families[0][0]
    if plan.selects:
        chosen, selection = select_candidate(
            config, dataset, plan, preprocessing, base_config, log_jacobian, world, say
        )
        rule = "highest" if config.selection_rule == "best" else "smallest latent within one standard error of the best"
        say(f"vae train: chose {chosen.label} ({rule} held-out L_{SELECTION_IW_SAMPLES} of {len(selection)} tried)")
    model_config = chosen.applied_to(base_config)
    if chosen.hidden:
        plan = replace(plan, patience=plan.nonlinear_patience)

    x_train = to_model_tensor(dataset.x[plan.train_rows], preprocessing).to(world.device)
    x_val = to_model_tensor(dataset.x[plan.val_rows], preprocessing).to(world.device)
    fitted = fit_vae(
        model_config, x_train, x_val, config, plan, world, log_jacobian, progress=config.progress and world.main
    )
    if config.refit and is_ppca(fitted.model):
        fitted, note = refit_linear(fitted, x_train, x_val, config, plan, world, log_jacobian)
        say(f"vae train: {note}")
        plan = replace(plan, notes=[*plan.notes, note])
    world.barrier()
    if not world.main:
        return None  # only the main process writes the checkpoint and the model directory
    model, result = fitted.model.cpu(), fitted.result  # export always produces CPU-loadable graphs
    resolved = asdict(config) | {
        "likelihood": plan.likelihood,
        "noise": chosen.noise,
        "scaling": plan.scaling,
        "latent_dim": chosen.latent_dim,
        "hidden": list(chosen.hidden),
        "batch_size": plan.batch_size,
        "epochs": plan.epochs,
        "patience": plan.patience,
        "fpr": plan.fpr,
    }
    summary = TrainingSummary(
        data_source=dataset.source,
        seed=config.seed,
        epochs=result.epochs_run,
        best_epoch=result.best_epoch,
        best_val_elbo=result.best_value,
        config=json.loads(json.dumps(resolved)),
        selection=selection,
        notes=plan.notes,
    )
    shown = plan.val_rows[:REPORT_SAMPLE_ROWS]
    sample = (dataset.x[shown], None if dataset.y is None else dataset.y[shown])
    checkpoint = make_checkpoint(model, preprocessing, summary, result.history, image_spec(dataset), sample)
    checkpoint["feature_names"] = dataset.feature_names  # the manifest's feature_names (training/export.py)
    calibration = CalibrationPlan(
        x_raw=dataset.x[plan.cal_rows],
        iw_samples=config.score_iw_samples,
        fpr=plan.fpr,
        seed=config.seed,
        fpr_note=plan.fpr_note,
    )
    artifact = export_model_dir(checkpoint, Path(config.out), calibration, progress=config.progress)
    write_report(artifact.dir)
    return artifact


def run(args: argparse.Namespace) -> int:
    """`vae train` from parsed flags: train, print a summary, and return the exit status."""
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k != "command"})
    try:
        artifact = train(config)
    except (DataError, ExportError, ConfigError, DeviceError) as exc:
        print(f"vae train: {exc}", file=sys.stderr)
        return 2
    if artifact is None:  # a torchrun process other than the main one
        return 0
    summary, scoring = artifact.manifest.training, artifact.manifest.scoring
    calibration = scoring.calibration
    print(
        f"wrote {artifact.dir}: best validation ELBO {summary.best_val_elbo:.3f} nats "
        f"at epoch {summary.best_epoch} of {summary.epochs}; threshold {calibration.threshold:.3f} "
        f"at fpr {calibration.fpr:.4g} from {calibration.n} calibration rows; score {scoring.score_label}"
    )
    return 0


if __name__ == "__main__":  # torchrun --nproc-per-node N -m training.train [vae train's flags]
    sys.exit(run(train_parser().parse_args()))
