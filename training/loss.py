"""The ELBO's terms in torch, for gradients. Pure functions of tensors.

service/core/scoring.py holds the same maths in numpy for serving; a test pins the two together.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


def kl_per_dimension(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, e^logvar) || N(0, 1)) per latent dimension, (B, d) -> (B, d).

    Closed form (Kingma & Welling 2014, appendix B): 1/2 * (mu^2 + sigma^2 - 1 - ln sigma^2).
    """
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag e^logvar) || N(0, I)) per row, (B, d) -> (B,)."""
    return kl_per_dimension(mu, logvar).sum(dim=1)


def bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """Elementwise ln p(x|logits) = x*l - softplus(l): stable for any logit, x in [0, 1]."""
    return x * logits - F.softplus(logits)


def gaussian_log_prob(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """Elementwise ln N(x; mean, e^logvar)."""
    return -0.5 * (LOG_2PI + logvar + (x - mean).pow(2) * torch.exp(-logvar))


def log_likelihood(x: Tensor, params: tuple[Tensor, ...], likelihood: str) -> Tensor:
    """ln p(x|z) summed over features: x (B, *shape), params from the decoder -> (B,)."""
    if likelihood == "bernoulli":
        per_feature = bernoulli_log_prob(x, params[0])
    else:
        per_feature = gaussian_log_prob(x, params[0], params[1])
    return per_feature.flatten(1).sum(dim=1)


class ElboTerms(NamedTuple):
    """Per-input terms in nats: reconstruction = E_q[ln p(x|z)], kl = KL(q(z|x) || p(z))."""

    reconstruction: Tensor  # (B,)
    kl_per_dim: Tensor  # (B, d)

    @property
    def kl(self) -> Tensor:
        return self.kl_per_dim.sum(dim=1)

    @property
    def elbo(self) -> Tensor:
        return self.reconstruction - self.kl

    def loss(self, beta: float = 1.0, free_bits: float = 0.0) -> Tensor:
        """The training objective: the negative beta-weighted ELBO, averaged over the batch.

        With free_bits > 0, each latent dimension's batch-mean KL counts as at least free_bits nats
        (Kingma et al. 2016), so the optimiser gains nothing by collapsing a dimension onto the prior.
        """
        if free_bits > 0.0:
            kl = self.kl_per_dim.mean(dim=0).clamp(min=free_bits).sum()
        else:
            kl = self.kl.mean()
        return -self.reconstruction.mean() + beta * kl


def elbo_terms(model, x: Tensor, eps: Tensor, log_jacobian: float = 0.0) -> ElboTerms:
    """The ELBO's parts for x (B, *shape) with noise eps (L, B, d): L reparameterized draws each.

    `log_jacobian` (-sum ln scale for gaussian data, else 0) moves densities from model space to raw units;
    it is a constant, so it changes reported numbers and not gradients.
    """
    mu, logvar = model.encode(x)
    n_draws, batch = eps.shape[0], x.shape[0]
    z = model.reparameterize(mu.unsqueeze(0), logvar.unsqueeze(0), eps).reshape(n_draws * batch, -1)
    params = model.decode(z)
    x_rep = x.unsqueeze(0).expand(n_draws, *x.shape).reshape(n_draws * batch, *x.shape[1:])
    reconstruction = log_likelihood(x_rep, params, model.config.likelihood).reshape(n_draws, batch).mean(0)
    return ElboTerms(reconstruction + log_jacobian, kl_per_dimension(mu, logvar))


def importance_weighted_bound(model, x: Tensor, eps: Tensor, log_jacobian: float = 0.0) -> Tensor:
    """L_K = ln (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x) per input, x (B, *shape), eps (K, B, d) -> (B,).

    The same estimator as service/core/scoring.py's bound_from_draws (a test pins them), used in training to
    compare model capacities on held-out rows by the score the service will serve.
    """
    mu, logvar = model.encode(x)
    n_draws, batch = eps.shape[0], x.shape[0]
    z = model.reparameterize(mu.unsqueeze(0), logvar.unsqueeze(0), eps)  # (K, B, d)
    params = model.decode(z.reshape(n_draws * batch, -1))
    x_rep = x.unsqueeze(0).expand(n_draws, *x.shape).reshape(n_draws * batch, *x.shape[1:])
    log_px = log_likelihood(x_rep, params, model.config.likelihood).reshape(n_draws, batch)
    log_prior = -0.5 * (LOG_2PI + z.pow(2)).sum(dim=2)
    # (z - mu) / sigma is eps exactly, so ln q(z|x) needs no division.
    log_posterior = -0.5 * (LOG_2PI + logvar.unsqueeze(0) + eps.pow(2)).sum(dim=2)
    log_weights = log_px + log_prior - log_posterior
    return torch.logsumexp(log_weights, dim=0) - math.log(n_draws) + log_jacobian
