"""The scorer graph: the decoder and ln p(x|z) for every draw in one network, exported beside encoder and decoder;
and the ELBO graph, which adds the encoder, the reparameterisation and the bounds' sums to it.

It takes the draws z (B, K, d) that the service reparameterized in numpy from its seeded noise, so the
decoder sees exactly the z it would see on its own, and returns ln p(x|z_k) summed over features in float64:
the same maths as service/core/scoring.py's log_prob_per_feature (the reference; tests pin the two), without
handing (B*K, D) decoder outputs back to numpy. The prior and posterior densities of z (d numbers per draw)
stay in numpy.

The ELBO graph takes x and the noise eps (B, S, d) itself, so a small request costs one runtime call and a few
numpy calls instead of two calls and some forty numpy calls on arrays of a few numbers (docs/benchmark-serving.md).
It computes what service/core/scoring.py computes from the encoder's and the scorer's outputs (the reference,
which tests pin it to): z = mu + sigma * eps in float32, the scorer's ln p(x|z), ln p(z) - ln q(z|x) and the KL in
closed form, all sums in float64.

Precision: each feature's log-density is computed in float32, from the decoder's float32 outputs, whose own
rounding it already carries; the sum over D features, where float32 would lose digits, is in float64. Measured
on the digits model (4096 rows x 2 draws): the same largest difference from the float64 reference (1.3e-5
nats) as an all-float64 graph, at a tenth of its time (ONNX Runtime's float64 Exp and Log, and its Softplus,
are not vectorized).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from training.model import VAE

LOG_2PI = math.log(2.0 * math.pi)
SCORER_INPUTS = ["x", "z"]
SCORER_OUTPUTS = ["log_px"]
ELBO_INPUTS = ["x", "eps"]
ELBO_OUTPUTS = ["log_px", "log_ratio", "kl"]


def _draws_flat(z: Tensor) -> Tensor:
    """z (B, K, d) -> (B*K, d), the decoder's batch."""
    return z.reshape(z.shape[0] * z.shape[1], z.shape[2])


class BernoulliScorer(nn.Module):
    """x (B, *input_shape) float32, z (B, K, d) float32 -> ln p(x|z_k) (B, K) float64."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.decoder = model.decoder

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        b, k = z.shape[0], z.shape[1]
        (logits,) = self.decoder(_draws_flat(z))
        logits = logits.reshape(b, k, -1)
        # softplus(l) = max(l, 0) + ln(1 + e^-|l|): stable for any logit, as np.logaddexp(0, l) is.
        softplus = torch.relu(logits) + torch.log1p(torch.exp(-torch.abs(logits)))
        return (x.reshape(b, 1, -1) * logits - softplus).double().sum(dim=2)  # (B, K, D) -> (B, K), summed in float64


class GaussianScorer(nn.Module):
    """x (B, *input_shape) float32, z (B, K, d) float32 -> ln p(x|z_k) (B, K) float64."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.decoder = model.decoder
        self.log_2pi = LOG_2PI  # an attribute: TorchScript cannot read module-level floats

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        b, k = z.shape[0], z.shape[1]
        mean, logvar = self.decoder(_draws_flat(z))  # logvar already clamped by the decoder, as served
        mean, logvar = mean.reshape(b, k, -1), logvar.reshape(b, k, -1)
        per_feature = -0.5 * (self.log_2pi + logvar + (x.reshape(b, 1, -1) - mean) ** 2 * torch.exp(-logvar))
        return per_feature.double().sum(dim=2)  # (B, K, D) -> (B, K), summed in float64


def scorer_for(model: VAE) -> nn.Module:
    """The scorer network of a model, sharing its decoder's weights."""
    return BernoulliScorer(model) if model.config.likelihood == "bernoulli" else GaussianScorer(model)


class ElboGraph(nn.Module):
    """Each draw's terms of the ELBO and of L_K, from the input and its noise, in model space:

    x (B, *input_shape) float32, eps (B, S, d) float32 (the S = L + K draws' noise, the ELBO's L first) ->
    log_px (B, S) = ln p(x|z), log_ratio (B, S) = ln p(z) - ln q(z|x), kl (B,): all float64.

    With z = mu + sigma * eps, ln p(z) - ln q(z|x) = 1/2 sum(eps^2 - z^2 + ln sigma^2) (the ln 2pi terms cancel), as
    scoring.log_prior_ratio computes it. numpy then takes the reconstruction term (the mean of the ELBO's L
    ln p(x|z)) and L_K (the log-mean-exp of the last K log_px + log_ratio) exactly as for the scorer's outputs. The
    graph's float64 operators are only exact ones (products, sums, casts): ONNX Runtime's float64 exp and log give
    different last bits depending on where a value sits in the batch, which would make a request's numbers depend
    on the requests beside it; so sigma^2 is float32's exp, as for z.
    """

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.scorer = scorer_for(model)
        self.latent_dim = float(model.config.latent_dim)  # an attribute: TorchScript cannot read module-level floats

    def forward(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encoder(x)
        z = mu.unsqueeze(1) + torch.exp(0.5 * logvar).unsqueeze(1) * eps  # float32, as scoring.reparameterize
        log_px = self.scorer(x, z)  # (B, S) float64
        mu64, logvar64 = mu.double(), logvar.double()
        sum_logvar = logvar64.sum(dim=1)
        kl = 0.5 * ((mu64 * mu64 + torch.exp(logvar).double()).sum(dim=1) - sum_logvar - self.latent_dim)
        eps64, z64 = eps.double(), z.double()
        half = (eps64 * eps64).sum(dim=2) - (z64 * z64).sum(dim=2) + sum_logvar.unsqueeze(1)
        return log_px, 0.5 * half, kl
