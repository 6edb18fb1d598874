"""Probabilistic PCA in closed form, as the starting point of a linear VAE with one shared noise variance.

A linear decoder with a shared gaussian noise and a standard normal prior is probabilistic PCA (Tipping and
Bishop 1999), whose maximum-likelihood fit needs no gradients: with the data's covariance eigenvalues
λ_1 ≥ … ≥ λ_D and eigenvectors U, the noise variance σ² is the mean of the D − q discarded eigenvalues and the
decoder is W = U_q (Λ_q − σ²I)^½ around the data's mean. Its posterior is gaussian with a diagonal covariance,
so a linear encoder represents it exactly and the ELBO equals ln p(x). Gradient training from random weights,
early-stopped on a few held-out rows, stops short of this optimum (docs/benchmark-anomaly.md: digits).

The covariance is first shrunk towards a multiple of the identity by Ledoit and Wolf's (2004) rule, which
needs no tuning and vanishes as rows outnumber features. With about as many rows as features the sample
covariance's trailing eigenvalues are far too small, so the unshrunk fit's σ² is too: on a digit class's
50-row selection folds (64 pixels) its held-out likelihood fell from latent 8 to 16 and selection kept
latent 8 (test AUROC 0.974 on digit 8, against 0.977 before); the shrunk fit's rises to latent 32, which
selection keeps (0.978). docs/benchmark-anomaly.md has the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.covariance import ledoit_wolf_shrinkage

from training.model import DECODER_LOGVAR_RANGE, ENCODER_LOGVAR_RANGE, VAE


@dataclass(frozen=True)
class PPCAFit:
    mean: np.ndarray  # (D,)
    components: np.ndarray  # (q, D): the q leading eigenvectors, one per row
    eigenvalues: np.ndarray  # (q,) their eigenvalues, floored at the noise variance
    noise_variance: float  # σ², within the decoder's log-variance bounds
    shrinkage: float  # the weight of the identity target in the covariance, in [0, 1]


def fit_ppca(x: np.ndarray, latent_dim: int, shrink: bool = True) -> PPCAFit:
    """The maximum-likelihood fit of x (N, D) with `latent_dim` components to its (shrunk) covariance.

    Eigenvalues are those of the sample covariance with N − 1, as scikit-learn's PCA, so that unshrunk and for
    N > D its `score_samples` is this model's log-likelihood. Shrinkage by α moves each towards their mean:
    (1 − α) λ + α mean(λ), with the same eigenvectors. With fewer rows than features (or q beyond the rank) the
    missing eigenvalues are 0 and count among the discarded ones; σ² is floored at the decoder's smallest
    variance, and components whose eigenvalue is below σ² get no weight.
    """
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    n, d = x.shape
    mean = x.mean(axis=0)
    # The right singular vectors of the centred rows are the covariance's eigenvectors; at most min(N, D) of them.
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    eigenvalues = np.zeros(d)
    eigenvalues[: len(singular)] = singular**2 / max(n - 1, 1)
    shrinkage = float(ledoit_wolf_shrinkage(x)) if shrink and n > 1 else 0.0
    eigenvalues = (1.0 - shrinkage) * eigenvalues + shrinkage * eigenvalues.mean()
    components = np.zeros((latent_dim, d))
    kept = min(latent_dim, len(singular))
    components[:kept] = vt[:kept]
    discarded = eigenvalues[latent_dim:]
    low, high = (math.exp(v) for v in DECODER_LOGVAR_RANGE)
    noise_variance = float(np.clip(discarded.mean() if len(discarded) else 0.0, low, high))
    leading = np.maximum(eigenvalues[:latent_dim], noise_variance)
    return PPCAFit(mean, components, leading, noise_variance, shrinkage)


def initialise_linear_vae(model: VAE, x: torch.Tensor, shrink: bool = True) -> None:
    """Set a linear, shared-noise gaussian VAE's weights to the closed-form PPCA fit of x (N, *input_shape).

    Decoder: mean = W z + mean, W = U_q (Λ_q − σ²I)^½, log-variance ln σ². Encoder: the exact posterior,
    mu = M⁻¹Wᵀ(x − mean) with M = WᵀW + σ²I = Λ_q, i.e. diag(√(λ − σ²) / λ) U_qᵀ (x − mean), and
    log-variance ln(σ²/λ) for every x (zero weights).
    """
    config = model.config
    if not is_ppca(model):
        raise ValueError(f"PPCA initialises a linear gaussian VAE with shared noise, got {config}")
    fit = fit_ppca(x.detach().cpu().numpy(), config.latent_dim, shrink)
    scale = np.sqrt(fit.eigenvalues - fit.noise_variance)  # (q,) W's column norms
    decoder_weight = fit.components.T * scale  # (D, q)
    encoder_mu = (scale / fit.eigenvalues)[:, None] * fit.components  # (q, D)
    low, high = ENCODER_LOGVAR_RANGE
    encoder_logvar = np.clip(np.log(fit.noise_variance / fit.eigenvalues), low, high)  # (q,)
    head, decoder, noise = model.encoder.head, model.decoder.net[0], model.decoder.constant_logvar
    q = config.latent_dim
    with torch.no_grad():
        head.weight.zero_()
        head.weight[:q] = torch.as_tensor(encoder_mu, dtype=head.weight.dtype)
        head.bias[:q] = torch.as_tensor(-encoder_mu @ fit.mean, dtype=head.bias.dtype)
        head.bias[q:] = torch.as_tensor(encoder_logvar, dtype=head.bias.dtype)
        decoder.weight.copy_(torch.as_tensor(decoder_weight, dtype=decoder.weight.dtype))
        decoder.bias.copy_(torch.as_tensor(fit.mean, dtype=decoder.bias.dtype))
        noise.value.fill_(math.log(fit.noise_variance))


def is_ppca(model: VAE) -> bool:
    """A linear MLP VAE with a shared gaussian noise: probabilistic PCA, which has a closed-form fit."""
    config = model.config
    return (
        config.architecture == "mlp"
        and not config.hidden
        and config.likelihood == "gaussian"
        and config.noise == "shared"
    )
