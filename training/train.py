"""`vae train`: data -> preprocessing -> fit -> checkpoint -> model directory."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from service.artifact import Artifact, Preprocessing, TrainingSummary
from training.data import Dataset, fit_preprocessing, load_dataset
from training.export import export_model_dir, make_checkpoint
from training.loop import fit
from training.loss import elbo_terms
from training.model import VAE, ModelConfig
from training.train_config import TrainConfig


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded shuffle into (train, validation) row indices; each gets at least one row."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def preprocess(dataset: Dataset, train_rows: np.ndarray, likelihood: str) -> Preprocessing:
    # Bernoulli scaling maps the data's range onto [0, 1], so it is fitted on every row: a fixed range, not a
    # learned statistic. Gaussian standardisation is fitted on the training rows only.
    fit_rows = dataset.x if likelihood == "bernoulli" else dataset.x[train_rows]
    offset, scale = fit_preprocessing(fit_rows, likelihood)
    return Preprocessing(offset=offset, scale=scale)


def to_model_tensor(x_raw: np.ndarray, preprocessing: Preprocessing) -> torch.Tensor:
    flat = x_raw.reshape(len(x_raw), -1).astype(np.float64)
    return torch.from_numpy(preprocessing.to_model(flat).reshape(x_raw.shape).astype(np.float32))


def train(config: TrainConfig) -> Artifact:
    """Train on config.data and write the model directory config.out."""
    dataset = load_dataset(config.data)
    likelihood = config.likelihood or dataset.default_likelihood
    train_rows, val_rows = split_indices(len(dataset.x), config.val_fraction, config.seed)
    preprocessing = preprocess(dataset, train_rows, likelihood)
    x_train = to_model_tensor(dataset.x[train_rows], preprocessing)
    x_val = to_model_tensor(dataset.x[val_rows], preprocessing)

    torch.manual_seed(config.seed)
    model_config = ModelConfig(
        input_shape=list(dataset.input_shape),
        latent_dim=config.latent_dim,
        hidden=list(config.hidden),
        likelihood=likelihood,
    )
    model = VAE(model_config)
    # Reported ELBOs are densities in raw units (see Manifest.log_jacobian); a constant, so gradients ignore it.
    log_jacobian = 0.0 if likelihood == "bernoulli" else -preprocessing.log_scale_sum(model_config.n_features)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    noise = torch.Generator().manual_seed(config.seed + 1)

    def batches(epoch: int):
        order = torch.randperm(len(x_train), generator=noise)
        for start in range(0, len(order), config.batch_size):
            yield x_train[order[start : start + config.batch_size]]

    def step(batch: torch.Tensor, epoch: int) -> dict[str, float]:
        eps = torch.randn(1, len(batch), config.latent_dim, generator=noise)
        terms = elbo_terms(model, batch, eps, log_jacobian)
        loss = terms.loss(config.beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {
            "loss": loss.item(),
            "elbo": terms.elbo.mean().item(),
            "reconstruction": terms.reconstruction.mean().item(),
            "kl": terms.kl.mean().item(),
        }

    val_eps = torch.randn(1, len(x_val), config.latent_dim, generator=torch.Generator().manual_seed(config.seed + 2))

    def validate() -> dict[str, float]:
        # The same noise every epoch, so that changes in val_elbo come from the weights alone.
        terms = elbo_terms(model, x_val, val_eps, log_jacobian)
        return {
            "val_elbo": terms.elbo.mean().item(),
            "val_reconstruction": terms.reconstruction.mean().item(),
            "val_kl": terms.kl.mean().item(),
        }

    result = fit(
        model,
        batches,
        step,
        validate,
        epochs=config.epochs,
        patience=config.patience,
        monitor="val_elbo",
        progress=config.progress,
    )
    model.load_state_dict(result.best_state)
    summary = TrainingSummary(
        data_source=dataset.source,
        seed=config.seed,
        epochs=result.epochs_run,
        best_epoch=result.best_epoch,
        best_val_elbo=result.best_value,
        config=json.loads(json.dumps(asdict(config) | {"likelihood": likelihood})),
    )
    checkpoint = make_checkpoint(model, preprocessing, summary, result.history)
    return export_model_dir(checkpoint, Path(config.out))
