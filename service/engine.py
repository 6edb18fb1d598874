"""The model as the API sees it: encode, sample, decode and elbo in raw units. Knows nothing of HTTP.

Requests arrive as validated arrays in raw units; the engine applies the manifest's preprocessing,
runs the runtime's networks, draws the noise from the request's seeded generator, and maps results
back to raw units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service import scoring
from service.artifact import Manifest
from service.errors import InvalidInput, LimitExceeded
from service.runtime import Runtime

# Raw values may sit this far outside a bernoulli model's data range and still count as inside it
# (rounding in clients' float formatting).
RANGE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Limits:
    max_instances: int = 4096  # instances (or latent vectors) in one request
    max_samples: int = 10_000  # n_samples in one request
    max_draws: int = 1_000_000  # instances x n_samples: the decoder rows one request may cost


def new_seed() -> int:
    """A fresh seed for a request that gave none; it is returned so the request can be repeated."""
    return int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass(frozen=True)
class Encoded:
    mu: np.ndarray  # (B, d)
    logvar: np.ndarray  # (B, d)

    @property
    def sigma(self) -> np.ndarray:
        return np.exp(0.5 * self.logvar.astype(np.float64))


@dataclass(frozen=True)
class Sampled:
    z: np.ndarray  # (B, n, d)
    x: np.ndarray | None  # (B, n, *input_shape) in raw units, when decoded
    seed: int


@dataclass(frozen=True)
class Scored:
    elbo: np.ndarray  # (B,)
    reconstruction: np.ndarray  # (B,)
    kl: np.ndarray  # (B,)
    n_samples: int
    seed: int


class VaeEngine:
    def __init__(self, manifest: Manifest, runtime: Runtime, limits: Limits = Limits()) -> None:
        self.manifest = manifest
        self.runtime = runtime
        self.limits = limits
        self._shape = list(manifest.input_shape)

    # --- conversions between raw units and model space -------------------------------------------------
    def to_model(self, x_raw: np.ndarray) -> np.ndarray:
        """(B, D) raw -> (B, *input_shape) float32 model space; rejects values a bernoulli model cannot score."""
        x = self.manifest.preprocessing.to_model(x_raw)
        if self.manifest.likelihood == "bernoulli":
            outside = (x < -RANGE_TOLERANCE) | (x > 1 + RANGE_TOLERANCE)
            if outside.any():
                row, col = (int(i) for i in np.argwhere(outside)[0])
                low = self.manifest.preprocessing.to_raw(np.zeros((1, x.shape[1])))[0, col]
                high = self.manifest.preprocessing.to_raw(np.ones((1, x.shape[1])))[0, col]
                raise InvalidInput(
                    f"instances[{row}]: feature {col} is {x_raw[row, col]:g}, outside the model's data range "
                    f"[{low:g}, {high:g}] (bernoulli likelihood)"
                )
            x = np.clip(x, 0.0, 1.0)
        return x.reshape([len(x), *self._shape]).astype(np.float32)

    def mean_to_raw(self, params: tuple[np.ndarray, ...]) -> np.ndarray:
        """Decoder outputs (N, *shape) -> the mean of p(x|z) in raw units, (N, *shape)."""
        mean = scoring.distribution_mean(params, self.manifest.likelihood)
        flat = mean.reshape(len(mean), -1)
        return self.manifest.preprocessing.to_raw(flat).reshape(mean.shape)

    # --- limits -------------------------------------------------------------------------------------------
    def _check_draws(self, batch: int, n_samples: int, field: str) -> None:
        if n_samples > self.limits.max_samples:
            raise InvalidInput(
                f"{field}: {n_samples} exceeds the limit of {self.limits.max_samples} (VAE_MAX_SAMPLES)"
            )
        if batch * n_samples > self.limits.max_draws:
            raise LimitExceeded(
                f"{batch} instances x {n_samples} {field} = {batch * n_samples} draws exceed the limit of "
                f"{self.limits.max_draws} per request (VAE_MAX_DRAWS); send fewer instances per request"
            )

    @staticmethod
    def _noise(seed: int | None, shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
        """eps ~ N(0, I) from the request's own generator: the same seed gives the same noise on any runtime."""
        seed = new_seed() if seed is None else seed
        return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32), seed

    # --- the API's verbs ----------------------------------------------------------------------------------
    def encode(self, x_raw: np.ndarray) -> Encoded:
        mu, logvar = self.runtime.encode(self.to_model(x_raw))
        return Encoded(mu, logvar)

    def decode(self, z: np.ndarray) -> np.ndarray:
        """z (B, d) -> mean of p(x|z) in raw units, (B, *input_shape)."""
        return self.mean_to_raw(self.runtime.decode(z.astype(np.float32)))

    def sample(self, x_raw: np.ndarray | None, n_samples: int, seed: int | None, decode: bool) -> Sampled:
        """z = mu + sigma * eps for each instance, or n draws from the prior N(0, I) when x_raw is None."""
        batch = 1 if x_raw is None else len(x_raw)
        self._check_draws(batch, n_samples, "n_samples")
        d = self.manifest.latent_dim
        eps, seed = self._noise(seed, (batch, n_samples, d))
        if x_raw is None:
            z = eps
        else:
            encoded = self.encode(x_raw)
            z = scoring.reparameterize(encoded.mu, encoded.logvar, eps)
        x = None
        if decode:
            x = self.decode(z.reshape(batch * n_samples, d)).reshape([batch, n_samples, *self._shape])
        return Sampled(z, x, seed)

    def elbo(self, x_raw: np.ndarray, n_samples: int = 1, seed: int | None = None) -> Scored:
        """Per-input ELBO, reconstruction and KL in nats (beta = 1), with n_samples Monte Carlo draws."""
        self._check_draws(len(x_raw), n_samples, "n_samples")
        x = self.to_model(x_raw)
        mu, logvar = self.runtime.encode(x)
        eps, seed = self._noise(seed, (len(x), n_samples, self.manifest.latent_dim))
        result = scoring.elbo(
            x.reshape(len(x), -1).astype(np.float64),
            mu,
            logvar,
            eps,
            self.runtime.decode,
            self.manifest.likelihood,
            self.manifest.log_jacobian,
        )
        return Scored(result.elbo, result.reconstruction, result.kl, n_samples, seed)

    def warm_up(self) -> None:
        """One real inference through both graphs; raises if the model cannot produce finite numbers."""
        example = self.manifest.preprocessing.to_raw(np.full((2, self.manifest.n_features), 0.5))
        scored = self.elbo(example, n_samples=2, seed=0)
        if not np.all(np.isfinite(scored.elbo)):
            raise RuntimeError(f"warm-up inference gave a non-finite ELBO: {scored.elbo.tolist()}")
