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
    # mlp: layer widths ([] is linear: with a shared gaussian noise, probabilistic PCA); conv: channels per block
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"  # p(x|z)
    architecture: Literal["mlp", "conv"] = "mlp"  # conv needs input_shape C x H x W
    # gaussian only: "feature", a variance per feature that the decoder computes from z; "diagonal", one learned
    # variance per feature, the same for every z (factor analysis's form, unchanged in meaning when a feature is
    # rescaled); "shared", one learned variance for every feature (the probabilistic-PCA form, whose scores are
    # not dominated by near-constant pixels: docs/benchmark-anomaly.md)
    noise: Literal["feature", "diagonal", "shared"] = "feature"

    @property
    def constant_noise(self) -> bool:
        """The decoder's variance is learned once, not computed from z."""
        return self.noise in ("diagonal", "shared")

    @property
    def n_features(self) -> int:
        return math.prod(self.input_shape)

    def to_dict(self) -> dict:
        return asdict(self)


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with SiLU between them (not after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def conv_sizes(height: int, width: int, blocks: int) -> list[tuple[int, int]]:
    """Spatial sizes after each stride-2 block (kernel 3, padding 1): s -> ceil(s / 2), input size first."""
    sizes = [(height, width)]
    for _ in range(blocks):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


class ConvEncoder(nn.Module):
    """x (B, C, H, W) -> (mu, logvar), each (B, latent_dim): stride-2 conv blocks, then a linear head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        channels, height, width = config.input_shape
        self.logvar_min, self.logvar_max = ENCODER_LOGVAR_RANGE
        layers: list[nn.Module] = []
        for n_in, n_out in zip([channels, *config.hidden[:-1]], config.hidden, strict=False):
            layers += [nn.Conv2d(n_in, n_out, kernel_size=3, stride=2, padding=1), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        h, w = conv_sizes(height, width, len(config.hidden))[-1]
        self.head = nn.Linear(config.hidden[-1] * h * w, 2 * config.latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.head(self.body(x).flatten(1))
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(self.logvar_min, self.logvar_max)


class ConvDecoder(nn.Module):
    """z (B, latent_dim) -> decoder parameters (B, k*C, H, W); the two subclasses split them.

    Mirrors the encoder with transposed convolutions whose output_padding makes every size match
    the encoder's exactly, so any H and W come back unchanged (odd ones included).
    """

    def __init__(self, config: ModelConfig, params_per_channel: int) -> None:
        super().__init__()
        channels, height, width = config.input_shape
        self.logvar_min, self.logvar_max = DECODER_LOGVAR_RANGE
        sizes = conv_sizes(height, width, len(config.hidden))
        widths = list(reversed(config.hidden))
        self.start_shape = [widths[0], sizes[-1][0], sizes[-1][1]]
        self.project = nn.Linear(config.latent_dim, widths[0] * sizes[-1][0] * sizes[-1][1])
        layers: list[nn.Module] = [nn.SiLU()]
        targets = list(reversed(sizes[:-1]))  # the sizes to grow back to, smallest first
        smaller = list(reversed(sizes[1:]))
        for i, (n_in, (target, small)) in enumerate(zip(widths, zip(targets, smaller, strict=False), strict=False)):
            n_out = widths[i + 1] if i + 1 < len(widths) else widths[-1]
            padding = (target[0] - (2 * small[0] - 1), target[1] - (2 * small[1] - 1))
            layers += [
                nn.ConvTranspose2d(n_in, n_out, kernel_size=3, stride=2, padding=1, output_padding=padding),
                nn.SiLU(),
            ]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(widths[-1], channels * params_per_channel, kernel_size=3, padding=1)

    def params(self, z: Tensor) -> Tensor:
        h = self.project(z).reshape([z.shape[0]] + self.start_shape)
        return self.out(self.body(h))


class ConvBernoulliDecoder(ConvDecoder):
    """z (B, latent_dim) -> (logits,), (B, C, H, W)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, params_per_channel=1)

    def forward(self, z: Tensor) -> tuple[Tensor]:
        return (self.params(z),)


class ConvGaussianDecoder(ConvDecoder):
    """z (B, latent_dim) -> (mean, logvar), each (B, C, H, W)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, params_per_channel=1 if config.constant_noise else 2)
        self.constant_logvar = ConstantLogVariance(config) if config.constant_noise else None

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if self.constant_logvar is not None:
            mean = self.params(z)
            return mean, self.constant_logvar(mean)
        mean, logvar = self.params(z).chunk(2, dim=1)
        return mean, logvar.clamp(self.logvar_min, self.logvar_max)


class Encoder(nn.Module):
    """x (B, *input_shape) -> (mu, logvar), each (B, latent_dim)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.logvar_min, self.logvar_max = ENCODER_LOGVAR_RANGE
        # No hidden layers: a linear encoder, which is exact for a linear-gaussian decoder's posterior.
        self.body = (
            nn.Sequential(mlp([config.n_features, *config.hidden]), nn.SiLU()) if config.hidden else nn.Identity()
        )
        self.head = nn.Linear(config.hidden[-1] if config.hidden else config.n_features, 2 * config.latent_dim)

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


class ConstantLogVariance(nn.Module):
    """A learned log-variance that does not depend on z: one for every feature (shared noise) or one per feature
    (diagonal noise). Broadcast to the mean's shape so the graphs' outputs keep their form (B, *input_shape) and
    the service needs no special case."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        shape = () if config.noise == "shared" else tuple(config.input_shape)
        self.value = nn.Parameter(torch.zeros(shape))
        self.logvar_min, self.logvar_max = DECODER_LOGVAR_RANGE

    def forward(self, mean: Tensor) -> Tensor:
        return torch.zeros_like(mean) + self.value.clamp(self.logvar_min, self.logvar_max)


class GaussianDecoder(nn.Module):
    """z (B, latent_dim) -> (mean, logvar), each shaped (B, *input_shape)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_shape = list(config.input_shape)
        self.logvar_min, self.logvar_max = DECODER_LOGVAR_RANGE
        self.constant_logvar = ConstantLogVariance(config) if config.constant_noise else None
        per_feature = 1 if self.constant_logvar is not None else 2
        self.net = mlp([config.latent_dim, *reversed(config.hidden), per_feature * config.n_features])

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        shape = [z.shape[0]] + self.input_shape
        if self.constant_logvar is not None:
            mean = self.net(z).reshape(shape)
            return mean, self.constant_logvar(mean)
        mean, logvar = self.net(z).chunk(2, dim=1)
        logvar = logvar.clamp(self.logvar_min, self.logvar_max)
        return mean.reshape(shape), logvar.reshape(shape)


DECODER_OUTPUTS = {"bernoulli": ["logits"], "gaussian": ["mean", "logvar"]}


class VAE(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        if config.architecture == "conv":
            if len(config.input_shape) != 3:
                raise ValueError(f"--arch conv needs data shaped C x H x W, got input_shape {config.input_shape}")
            if not config.hidden:
                raise ValueError("--arch conv needs at least one block of channels in hidden")
            self.encoder = ConvEncoder(config)
            self.decoder = (
                ConvBernoulliDecoder(config) if config.likelihood == "bernoulli" else ConvGaussianDecoder(config)
            )
        else:
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
