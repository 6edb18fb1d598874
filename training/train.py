"""`vae train`: data -> preprocessing -> fit -> checkpoint -> model directory."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import sys

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from service.artifact import Artifact, ImageSpec, Preprocessing, TrainingSummary
from service.scoring import min_fpr
from training.data import Dataset, fit_preprocessing, load_dataset
from training.distributed import World, join_world
from training.export import CalibrationPlan, export_model_dir, make_checkpoint
from training.loop import fit
from training.loss import elbo_terms
from training.report import write_report
from training.model import VAE, ModelConfig
from training.train_config import TrainConfig


class ConfigError(ValueError):
    """Options that cannot work together on this data; raised before training starts."""


def split_indices(
    n: int, val_fraction: float, calibration_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded shuffle into (train, validation, calibration) row indices, each non-empty."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * val_fraction))
    n_cal = max(1, round(n * calibration_fraction))
    if n - n_val - n_cal < 1:
        raise ConfigError(
            f"{n} rows leave none for training after --val-fraction {val_fraction} and "
            f"--calibration-fraction {calibration_fraction}"
        )
    return np.sort(order[n_val + n_cal :]), np.sort(order[:n_val]), np.sort(order[n_val : n_val + n_cal])


def preprocess(dataset: Dataset, train_rows: np.ndarray, likelihood: str) -> Preprocessing:
    # Bernoulli scaling maps the data's range onto [0, 1], so it is fitted on every row: a fixed range, not a
    # learned statistic. Gaussian standardisation is fitted on the training rows only.
    fit_rows = dataset.x if likelihood == "bernoulli" else dataset.x[train_rows]
    offset, scale = fit_preprocessing(fit_rows, likelihood, dataset.value_range)
    return Preprocessing(offset=offset, scale=scale)


def to_model_tensor(x_raw: np.ndarray, preprocessing: Preprocessing) -> torch.Tensor:
    flat = x_raw.reshape(len(x_raw), -1).astype(np.float64)
    return torch.from_numpy(preprocessing.to_model(flat).reshape(x_raw.shape).astype(np.float32))


DEFAULT_HIDDEN = {"mlp": [256, 128], "conv": [32, 64]}
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

    Under torchrun, every process trains on its share of the rows and only the main one writes the
    directory and returns the artifact; the others return None.
    """
    dataset = load_dataset(
        config.data, channels=config.channels, image_size=tuple(config.image_size) if config.image_size else None
    )
    likelihood = config.likelihood or dataset.default_likelihood
    train_rows, val_rows, cal_rows = split_indices(
        len(dataset.x), config.val_fraction, config.calibration_fraction, config.seed
    )
    if config.fpr < min_fpr(len(cal_rows)):
        raise ConfigError(
            f"--fpr {config.fpr:g} needs at least {math.ceil(1 / config.fpr) - 1} calibration rows; "
            f"the calibration split has {len(cal_rows)}: raise --calibration-fraction or --fpr"
        )
    if config.threads:
        torch.set_num_threads(config.threads)
    world = join_world(config.device)
    try:
        return _train(config, dataset, likelihood, train_rows, val_rows, cal_rows, world)
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


def _train(config, dataset, likelihood, train_rows, val_rows, cal_rows, world: World) -> Artifact | None:
    preprocessing = preprocess(dataset, train_rows, likelihood)
    x_train = to_model_tensor(dataset.x[train_rows], preprocessing).to(world.device)
    x_val = to_model_tensor(dataset.x[val_rows], preprocessing).to(world.device)

    torch.manual_seed(config.seed)
    model_config = ModelConfig(
        input_shape=list(dataset.input_shape),
        latent_dim=config.latent_dim,
        hidden=list(config.hidden or DEFAULT_HIDDEN[config.arch]),
        likelihood=likelihood,
        architecture=config.arch,
    )
    if config.arch == "conv" and len(dataset.input_shape) != 3:
        raise ConfigError(f"--arch conv needs data shaped C x H x W; {dataset.source} has rows shaped {list(dataset.input_shape)}")
    model = VAE(model_config).to(world.device)
    # Reported ELBOs are densities in raw units (see Manifest.log_jacobian); a constant, so gradients ignore it.
    log_jacobian = 0.0 if likelihood == "bernoulli" else -float(preprocessing.log_scale(model_config.n_features).sum())
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
        for start in range(0, len(order), config.batch_size):
            yield x_train[order[start : start + config.batch_size]]

    def step(batch: torch.Tensor, epoch: int) -> dict[str, float]:
        eps = torch.randn(1, len(batch), config.latent_dim, generator=noise).to(world.device)
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

    val_eps = torch.randn(1, len(x_val), config.latent_dim, generator=torch.Generator().manual_seed(config.seed + 2))
    # Each process validates its share of the rows; the sums are all-reduced, so every process sees the
    # same metrics and stops early at the same epoch.
    val_share = slice(world.rank, None, world.size)
    x_val_share, val_eps_share = x_val[val_share], val_eps[:, val_share].to(world.device)

    def validate() -> dict[str, float]:
        # The same noise every epoch, so that changes in val_elbo come from the weights alone.
        terms = elbo_terms(model, x_val_share, val_eps_share, log_jacobian)
        mu, _ = model.encode(x_val_share)
        n, elbo, rec, kl, *moments = world.sum([
            len(x_val_share), terms.elbo.sum().item(), terms.reconstruction.sum().item(), terms.kl.sum().item(),
            *mu.sum(0).tolist(), *mu.pow(2).sum(0).tolist(),
        ])
        d = config.latent_dim
        mean, mean_sq = torch.tensor(moments[:d]) / n, torch.tensor(moments[d:]) / n
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
        epochs=config.epochs,
        patience=config.patience,
        monitor="val_elbo",
        progress=config.progress and world.main,
    )
    world.barrier()
    if not world.main:
        return None  # only the main process writes the checkpoint and the model directory
    model.load_state_dict(result.best_state)
    model.cpu()  # export always produces CPU-loadable graphs
    summary = TrainingSummary(
        data_source=dataset.source,
        seed=config.seed,
        epochs=result.epochs_run,
        best_epoch=result.best_epoch,
        best_val_elbo=result.best_value,
        config=json.loads(json.dumps(asdict(config) | {"likelihood": likelihood})),
    )
    shown = val_rows[:REPORT_SAMPLE_ROWS]
    sample = (dataset.x[shown], None if dataset.y is None else dataset.y[shown])
    checkpoint = make_checkpoint(model, preprocessing, summary, result.history, image_spec(dataset), sample)
    calibration = CalibrationPlan(
        x_raw=dataset.x[cal_rows], iw_samples=config.score_iw_samples, fpr=config.fpr, seed=config.seed
    )
    artifact = export_model_dir(checkpoint, Path(config.out), calibration, progress=config.progress)
    write_report(artifact.dir)
    return artifact


if __name__ == "__main__":  # torchrun --nproc-per-node N -m training.train [vae train's flags]
    from training.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
