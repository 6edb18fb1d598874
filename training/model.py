"""The VAE: an encoder q(z|x), a decoder p(x|z), and the reparameterization between them.

The model works in model space (after the manifest's preprocessing). Its methods are the API's
verbs, and encoder and decoder return plain tensors so that they export as they are.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

# Clamp ranges for log-variances. The encoder's keeps sigma in [e^-6, e^3] so that the KL term and
# exp(logvar) stay finite; the decoder's bounds each feature's log-density at
# 0.5 * (6 - ln 2pi) nats, so a near-constant feature cannot drive the likelihood to infinity.
ENCODER_LOGVAR_RANGE = (-12.0, 6.0)
DECODER_LOGVAR_RANGE = (-6.0, 6.0)


@dataclass
class ModelConfig:
    """Everything needed to rebuild the networks; stored in the checkpoint and the manifest."""

    input_shape: list[int]  # one instance, e.g. [1, 8, 8] for digits or [D] for tabular data
    latent_dim: int = 8  # size of z
    hidden: list[int] = field(default_factory=lambda: [256, 128])  # encoder widths; the decoder mirrors them
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"  # p(x|z)
    architecture: Literal["mlp"] = "mlp"

    @property
    def n_features(self) -> int:
        return math.prod(self.input_shape)

    def to_dict(self) -> dict:
        return asdict(self)


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with SiLU between them (not after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """x (B, *input_shape) -> (mu, logvar), each (B, latent_dim)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.logvar_min, self.logvar_max = ENCODER_LOGVAR_RANGE
        self.body = nn.Sequential(mlp([config.n_features, *config.hidden]), nn.SiLU())
        self.head = nn.Linear(config.hidden[-1], 2 * config.latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.head(self.body(x.flatten(1)))
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(self.logvar_min, self.logvar_max)


class BernoulliDecoder(nn.Module):
    """z (B, latent_dim) -> (logits,), logits shaped (B, *input_shape)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_shape = list(config.input_shape)
        self.net = mlp([config.latent_dim, *reversed(config.hidden), config.n_features])

    def forward(self, z: Tensor) -> tuple[Tensor]:
        logits = self.net(z).reshape([z.shape[0]] + self.input_shape)
        return (logits,)


class GaussianDecoder(nn.Module):
    """z (B, latent_dim) -> (mean, logvar), each shaped (B, *input_shape)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_shape = list(config.input_shape)
        self.logvar_min, self.logvar_max = DECODER_LOGVAR_RANGE
        self.net = mlp([config.latent_dim, *reversed(config.hidden), 2 * config.n_features])

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.net(z).chunk(2, dim=1)
        shape = [z.shape[0]] + self.input_shape
        logvar = logvar.clamp(self.logvar_min, self.logvar_max)
        return mean.reshape(shape), logvar.reshape(shape)


DECODER_OUTPUTS = {"bernoulli": ["logits"], "gaussian": ["mean", "logvar"]}


class VAE(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = BernoulliDecoder(config) if config.likelihood == "bernoulli" else GaussianDecoder(config)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder(x)

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
        """z = mu + sigma * eps; gradients flow to mu and logvar, not through the noise."""
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: Tensor) -> tuple[Tensor, ...]:
        return self.decoder(z)
