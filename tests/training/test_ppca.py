"""A linear VAE with shared gaussian noise starts at probabilistic PCA's closed-form maximum-likelihood fit."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA

from training.data import Dataset
from training.distributed import World
from training.loss import importance_weighted_bound
from training.model import VAE, ModelConfig
from training.plan import plan_training
from training.ppca import fit_ppca, initialise_linear_vae
from training.train import fit_vae, refit_linear
from training.train_config import TrainConfig

# float32 weights and sums of D terms: the bound matches float64 PCA to about 1e-6 of its size.
TOLERANCE = 2e-4  # nats, for log-likelihoods of -10 to -100 nats


def low_rank_rows(n: int, d: int, rank: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, d))
    return (signal + 0.3 * rng.standard_normal((n, d)) + rng.standard_normal(d)).astype(np.float32)


def linear_vae(d: int, q: int) -> VAE:
    return VAE(ModelConfig(input_shape=[d], latent_dim=q, hidden=[], likelihood="gaussian", noise="shared"))


def shrunk_ppca_log_density(x_fit: np.ndarray, x: np.ndarray, q: int) -> np.ndarray:
    """ln p(x) under PPCA fitted to scikit-learn's Ledoit-Wolf covariance of x_fit (rescaled to N - 1): the
    q leading eigenvalues kept, the rest replaced by their mean."""
    x_fit, n = x_fit.astype(np.float64), len(x_fit)
    eigenvalues, vectors = np.linalg.eigh(LedoitWolf().fit(x_fit).covariance_ * n / (n - 1))
    eigenvalues, vectors = eigenvalues[::-1], vectors[:, ::-1]
    sigma2 = eigenvalues[q:].mean()
    kept = vectors[:, :q]
    covariance = kept @ np.diag(eigenvalues[:q] - sigma2) @ kept.T + sigma2 * np.eye(len(eigenvalues))
    return multivariate_normal(x_fit.mean(axis=0), covariance).logpdf(x.astype(np.float64))


def single_draw_bound(model: VAE, x: np.ndarray, seed: int) -> np.ndarray:
    """L_1, one draw's ln p(x|z) + ln p(z) - ln q(z|x): the ELBO's estimate, and ln p(x) for every draw when
    q is the exact posterior."""
    eps = torch.randn(1, len(x), model.config.latent_dim, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return importance_weighted_bound(model, torch.from_numpy(x), eps).double().numpy()


@pytest.mark.parametrize("n, d, q", [(200, 10, 3), (87, 64, 16), (7, 6, 4)])
def test_the_initialised_model_scores_every_row_at_the_ppca_log_likelihood(n, d, q):
    x = low_rank_rows(n, d, rank=q + 1)
    model = linear_vae(d, q)
    initialise_linear_vae(model, torch.from_numpy(x), shrink=False)
    exact = PCA(n_components=q).fit(x.astype(np.float64)).score_samples(x.astype(np.float64))
    for seed in (1, 2):  # any draw: the encoder is the exact posterior, so the ELBO is ln p(x)
        np.testing.assert_allclose(single_draw_bound(model, x, seed), exact, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("n, d, q", [(200, 10, 3), (50, 64, 16)])
def test_with_shrinkage_the_model_scores_every_row_at_the_shrunk_ppca_log_likelihood(n, d, q):
    x = low_rank_rows(n, d, rank=q + 1)
    model = linear_vae(d, q)
    initialise_linear_vae(model, torch.from_numpy(x))
    exact = shrunk_ppca_log_density(x, x, q)
    for seed in (1, 2):
        np.testing.assert_allclose(single_draw_bound(model, x, seed), exact, rtol=0, atol=TOLERANCE)


def test_with_fewer_rows_than_features_the_missing_eigenvalues_are_discarded_zeros():
    x = low_rank_rows(20, 30, rank=5).astype(np.float64)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
    fit = fit_ppca(x, 8, shrink=False)
    # 19 non-zero eigenvalues of 30; sigma^2 averages the 22 discarded ones, 11 of them zeros.
    assert fit.noise_variance == pytest.approx(eigenvalues[8:19].sum() / 22, rel=1e-9)
    np.testing.assert_allclose(fit.eigenvalues, eigenvalues[:8], rtol=1e-9)


def test_beyond_the_rank_sigma_squared_is_the_decoders_floor_and_extra_components_get_no_weight():
    x = low_rank_rows(5, 8, rank=2)
    fit = fit_ppca(x, 6, shrink=False)  # 5 rows: rank 4
    assert fit.noise_variance == pytest.approx(math.exp(-6.0), rel=1e-12)
    assert np.all(fit.eigenvalues[4:] == fit.noise_variance)
    model = linear_vae(8, 6)
    initialise_linear_vae(model, torch.from_numpy(x), shrink=False)
    assert torch.all(model.decoder.net[0].weight[:, 4:] == 0.0)
    assert model.decoder.constant_logvar.value.item() == pytest.approx(-6.0)
    assert np.all(np.isfinite(single_draw_bound(model, x, seed=1)))


def test_only_a_linear_shared_noise_gaussian_vae_is_initialised_in_closed_form():
    mlp = VAE(ModelConfig(input_shape=[6], latent_dim=2, hidden=[8], likelihood="gaussian", noise="shared"))
    with pytest.raises(ValueError, match="^PPCA initialises a linear gaussian VAE with shared noise, got "):
        initialise_linear_vae(mlp, torch.zeros(10, 6))


def test_training_starts_at_the_closed_form_fit_and_keeps_it_when_no_epoch_is_better():
    x = low_rank_rows(200, 10, rank=3)
    dataset = Dataset(x, None, "t.npy", "array")
    config = TrainConfig(hidden=[], latent_dim=3, lr=0.0, progress=False)  # no step changes the weights
    plan = replace(plan_training(config, dataset), epochs=4, patience=2)
    x_train, x_val = (torch.from_numpy(x[rows]) for rows in (plan.train_rows, plan.val_rows))
    model_config = ModelConfig(input_shape=[10], latent_dim=3, hidden=[], likelihood="gaussian", noise="shared")
    fitted = fit_vae(model_config, x_train, x_val, config, plan, World(0, 1, torch.device("cpu")), 0.0, False)
    assert (fitted.result.best_epoch, fitted.result.epochs_run) == (0, 2)
    assert fitted.result.best_value == fitted.result.initial["val_elbo"]
    exact = shrunk_ppca_log_density(x[plan.train_rows], x[plan.val_rows], 3)
    np.testing.assert_allclose(single_draw_bound(fitted.model, x[plan.val_rows], 1), exact, rtol=0, atol=TOLERANCE)


def test_a_chosen_linear_model_is_refitted_in_closed_form_on_the_training_and_validation_rows():
    x = low_rank_rows(200, 10, rank=3)
    dataset = Dataset(x, None, "t.npy", "array")
    config = TrainConfig(hidden=[], latent_dim=3, lr=0.0, progress=False)
    plan = replace(plan_training(config, dataset), epochs=4, patience=2)
    x_train, x_val = (torch.from_numpy(x[rows]) for rows in (plan.train_rows, plan.val_rows))
    model_config = ModelConfig(input_shape=[10], latent_dim=3, hidden=[], likelihood="gaussian", noise="shared")
    world = World(0, 1, torch.device("cpu"))
    fitted = fit_vae(model_config, x_train, x_val, config, plan, world, 0.0, False)
    refitted, note = refit_linear(fitted, x_train, x_val, config, plan, world, 0.0)
    assert refitted.result is fitted.result  # the validated fit's record is what the manifest reports
    assert note == (
        f"refitted linear latent 3 on all {len(plan.train_rows) + len(plan.val_rows)} training and validation "
        "rows (closed form, then 0 epochs, the validated fit's best)"
    )
    rows = np.concatenate([plan.train_rows, plan.val_rows])
    exact = shrunk_ppca_log_density(x[rows], x[plan.cal_rows], 3)
    np.testing.assert_allclose(single_draw_bound(refitted.model, x[plan.cal_rows], 1), exact, rtol=0, atol=TOLERANCE)
    before = shrunk_ppca_log_density(x[plan.train_rows], x[plan.cal_rows], 3)
    assert np.abs(exact - before).max() > 100 * TOLERANCE  # the two fits are told apart


def test_the_refit_fine_tunes_for_the_validated_fits_best_epoch_and_keeps_the_last_weights():
    x = low_rank_rows(200, 10, rank=3)
    dataset = Dataset(x, None, "t.npy", "array")
    config = TrainConfig(hidden=[], latent_dim=3, progress=False)
    plan = replace(plan_training(config, dataset), epochs=4, patience=2)
    x_train, x_val = (torch.from_numpy(x[rows]) for rows in (plan.train_rows, plan.val_rows))
    model_config = ModelConfig(input_shape=[10], latent_dim=3, hidden=[], likelihood="gaussian", noise="shared")
    world = World(0, 1, torch.device("cpu"))
    fitted = fit_vae(model_config, x_train, x_val, config, plan, world, 0.0, False)
    fitted.result.best_epoch = 3  # as if early stopping had chosen three epochs of fine-tuning
    refitted, note = refit_linear(fitted, x_train, x_val, config, plan, world, 0.0)
    assert "(closed form, then 3 epochs, the validated fit's best)" in note
    x_all = torch.cat([x_train, x_val])
    again = fit_vae(model_config, x_all, x_val, config, replace(plan, epochs=3), world, 0.0, False, keep_last=True)
    assert (again.result.epochs_run, again.result.best_epoch) == (3, 3)
    for name, value in refitted.model.state_dict().items():
        torch.testing.assert_close(value, again.model.state_dict()[name], rtol=0, atol=0)
    start = linear_vae(10, 3)
    initialise_linear_vae(start, x_all)
    moved = [not torch.equal(v, start.state_dict()[k]) for k, v in refitted.model.state_dict().items()]
    assert any(moved)  # three epochs at the default rate moved the weights from the closed form
