"""The ELBO's maths in numpy, for serving and for calibration. No torch here.

Mirrors training/loss.py (a test pins the two together). Every result is in nats per input, float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

LOG_2PI = math.log(2.0 * math.pi)
# Rows per decoder call: bounds memory whatever the batch size and number of draws.
DECODE_CHUNK_ROWS = 8192

Decode = Callable[[np.ndarray], tuple[np.ndarray, ...]]  # z (N, d) float32 -> params, each (N, *shape)


def kl_to_standard_normal(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """KL(N(mu, diag e^logvar) || N(0, I)) per row, (B, d) -> (B,); 1/2 sum(mu^2 + sigma^2 - 1 - ln sigma^2)."""
    mu, logvar = mu.astype(np.float64), logvar.astype(np.float64)
    return 0.5 * np.sum(mu**2 + np.exp(logvar) - 1.0 - logvar, axis=1)


def log_prob_per_feature(x: np.ndarray, params: tuple[np.ndarray, ...], likelihood: str) -> np.ndarray:
    """Elementwise ln p(x|z) in model space: x (N, D), params each (N, D) -> (N, D) float64."""
    if likelihood == "bernoulli":
        logits = params[0].astype(np.float64)
        return x * logits - np.logaddexp(0.0, logits)  # x*l - softplus(l), stable for any l
    mean, logvar = (p.astype(np.float64) for p in params)
    return -0.5 * (LOG_2PI + logvar + (x - mean) ** 2 * np.exp(-logvar))


def distribution_mean(params: tuple[np.ndarray, ...], likelihood: str) -> np.ndarray:
    """The mean of p(x|z) in model space: sigmoid(logits), or the Gaussian mean."""
    if likelihood == "bernoulli":
        logits = params[0].astype(np.float64)
        return np.exp(-np.logaddexp(0.0, -logits))  # sigmoid without overflow
    return params[0].astype(np.float64)


def reparameterize(mu: np.ndarray, logvar: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """z = mu + sigma * eps: mu, logvar (B, d), eps (B, L, d) -> z (B, L, d) float32."""
    return (mu[:, None, :] + np.exp(0.5 * logvar)[:, None, :] * eps).astype(np.float32)


def log_likelihood_draws(
    x: np.ndarray, z: np.ndarray, decode: Decode, likelihood: str, chunk_rows: int = DECODE_CHUNK_ROWS
) -> np.ndarray:
    """ln p(x_b | z_bl) for every draw: x (B, D) model space, z (B, L, d) -> (B, L) float64.

    Decodes at most `chunk_rows` draws at a time, so memory stays bounded for large L.
    """
    batch, n_draws, latent_dim = z.shape
    flat_z = z.reshape(batch * n_draws, latent_dim)
    owner = np.repeat(np.arange(batch), n_draws)  # which input each flat draw belongs to
    out = np.empty(batch * n_draws, dtype=np.float64)
    for start in range(0, batch * n_draws, chunk_rows):
        stop = min(start + chunk_rows, batch * n_draws)
        params = tuple(p.reshape(stop - start, -1) for p in decode(flat_z[start:stop]))
        out[start:stop] = log_prob_per_feature(x[owner[start:stop]], params, likelihood).sum(axis=1)
    return out.reshape(batch, n_draws)


class ElboResult(NamedTuple):
    """Per-input terms in nats: reconstruction = (1/L) sum_l ln p(x|z_l), kl in closed form."""

    reconstruction: np.ndarray  # (B,)
    kl: np.ndarray  # (B,)

    @property
    def elbo(self) -> np.ndarray:
        return self.reconstruction - self.kl


def elbo(
    x: np.ndarray,
    mu: np.ndarray,
    logvar: np.ndarray,
    eps: np.ndarray,
    decode: Decode,
    likelihood: str,
    log_jacobian: float = 0.0,
) -> ElboResult:
    """The Monte Carlo ELBO of x (B, D) in model space, with noise eps (B, L, d).

    `log_jacobian` (-sum ln scale for gaussian data, else 0) reports densities in raw units.
    """
    z = reparameterize(mu, logvar, eps)
    reconstruction = log_likelihood_draws(x, z, decode, likelihood).mean(axis=1) + log_jacobian
    return ElboResult(reconstruction, kl_to_standard_normal(mu, logvar))
