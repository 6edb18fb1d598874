"""The model as the API sees it: encode, sample, decode and elbo in raw units. Knows nothing of HTTP.

Requests arrive as validated arrays in raw units; the engine applies the manifest's preprocessing,
runs the runtime's networks, draws the noise from the request's seeded generator, and maps results
back to raw units.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields, replace
from itertools import accumulate
from operator import attrgetter
from typing import Any, Literal

import numpy as np

from service.core import scoring
from service.core.artifact import Calibration, Estimator, Manifest
from service.core.errors import InvalidInput, LimitExceeded, ModelNotReady, Timeout
from service.core.progress import progress_bar
from service.core.runtime import Runtime
from service.core.seeding import seeded_generators

# Said of a request's n_samples or iw_samples that the request left out, when a limit refuses it.
MODEL_DEFAULT = " (the model's default; send a smaller one)"
# Raw values may sit this far outside a bernoulli model's data range and still count as inside it
# (rounding in clients' float formatting).
RANGE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Limits:
    max_instances: int = 4096  # instances (or latent vectors) in one request
    max_samples: int = 10_000  # n_samples in one request
    max_iw_samples: int = 10_000  # iw_samples (K) in one request
    max_draws: int = 1_000_000  # instances x (n_samples + iw_samples): the decoder rows one request may cost
    max_response_bytes: int = 64 * 1024 * 1024  # the largest answer, bounded before any work is done


@dataclass(frozen=True)
class Deadline:
    """When a request's work must stop. The engine checks it between decoder chunks, so the work of a
    request that has timed out ends at the next chunk instead of running to the end for nobody."""

    at: float  # time.monotonic()
    timeout_s: float  # the timeout it was set from, for the message

    @classmethod
    def after(cls, timeout_s: float) -> Deadline:
        return cls(time.monotonic() + timeout_s, timeout_s)

    @staticmethod
    def latest(deadlines: Iterable[Deadline | None]) -> Deadline | None:
        """The deadline of work shared by several requests: it may stop only once all of them have given up."""
        known = list(deadlines)
        if not known or any(d is None for d in known):
            return None
        return max((d for d in known if d is not None), key=lambda d: d.at)

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def error(self) -> Timeout:
        return Timeout(f"the request did not finish within {self.timeout_s:g} s (VAE_REQUEST_TIMEOUT_S)")

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise self.error()


def checker(deadline: Deadline | None) -> Callable[[], None] | None:
    """What the chunked loops call between chunks: deadline.check, or nothing without a deadline."""
    return deadline.check if deadline is not None else None


# Fresh seeds stay below 2**53, so a JSON client that parses numbers as doubles (JavaScript, many
# JSON libraries) reads back the exact seed, and replaying it gives the same numbers.
FRESH_SEED_BITS = 53


def new_seed() -> int:
    """A fresh seed for a request that gave none; it is returned so the request can be repeated."""
    return int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0] >> (64 - FRESH_SEED_BITS))


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
class ElboOptions:
    """What one /elbo request asks for, however it arrives: the native routes (JSON, .npy, multipart, the fast
    path), OIP v2, `vae score`, `vae evaluate` and calibration all build one and call prepare_elbo or elbo."""

    n_samples: int | None = None  # L: draws of the Monte Carlo ELBO; None: the model's default (1 before calibration)
    seed: int | None = None  # the request's noise; None: a fresh seed, returned in the answer
    iw_samples: int | None = None  # K of L_K; None: the K the threshold was calibrated with
    feature_scores: bool = False  # also each feature's share of -reconstruction
    threshold: float | None = None  # flag scores above this; None: the model's default
    fpr: float | None = None  # or the threshold at this false-alarm rate


# Made once per request, on the hot path: plain slotted dataclasses build in a fifth of a frozen one's time
# (0.15 against 0.77 µs for nine fields, where frozen sets each field through object.__setattr__).
@dataclass(slots=True)
class PreparedElbo:
    """One /elbo request, validated and in model space, ready to join a batch."""

    x: np.ndarray  # (B, *input_shape) model space, float32: the encoder's input as it is
    n_samples: int
    iw_samples: int
    seed: int
    feature_scores: bool
    threshold: float | None  # None only while the model is being calibrated


# How a group's draws are scored: the ELBO graph (everything in one runtime call per chunk of rows), the encoder and
# the scorer graph (ln p(x|z) in the graph, the rest in numpy), or the encoder, the decoder graph and numpy.
ScoringPath = Literal["elbo", "scorer", "decoder"]


def scoring_path(runtime: Runtime, draws: int) -> ScoringPath:
    """The path of a group whose rows each take `draws` draws (L + K). It depends on the model and on L + K only,
    so a request's numbers are the same alone or in any batch. The ELBO graph takes a row's draws in one call, so
    it is used while they fit in one chunk of scoring.DECODE_CHUNK_ROWS."""
    if runtime.has_elbo and draws <= scoring.DECODE_CHUNK_ROWS:
        return "elbo"
    return "scorer" if runtime.has_scorer else "decoder"


@dataclass(slots=True)  # made per batch: a frozen dataclass's __init__ costs 0.6 µs against 0.13
class _Group:
    """Requests of one batch that draw alike: the same L and K, and so the same path, with or without feature scores.
    Their draws stack into one array, so the maths runs once for all of them."""

    n_samples: int
    iw_samples: int
    path: ScoringPath
    feature_scores: bool
    rows: slice | np.ndarray  # the members' rows in the batch: a slice when the group is the whole batch
    n_rows: int
    local_rows: list[tuple[int, int, int]]  # (request index, first row, end row) within the group, in batch order


def _groups(requests: list[PreparedElbo], bounds: list[int], runtime: Runtime) -> list[_Group]:
    """The batch's requests grouped by how they draw; request i has rows bounds[i]:bounds[i + 1] of the batch."""
    members: dict[tuple[int, int, bool], list[int]] = {}
    for i, r in enumerate(requests):
        key = (r.n_samples, r.iw_samples, r.feature_scores)
        members.setdefault(key, []).append(i)
    groups = []
    for (n_samples, iw_samples, feature_scores), ids in members.items():
        path = scoring_path(runtime, n_samples + iw_samples)
        local, start = [], 0
        for i in ids:
            stop = start + bounds[i + 1] - bounds[i]
            local.append((i, start, stop))
            start = stop
        rows: slice | np.ndarray = slice(0, bounds[-1])
        if len(ids) < len(requests):
            rows = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in ids])
        groups.append(_Group(n_samples, iw_samples, path, feature_scores, rows, start, local))
    return groups


def _refuse_unscorable(elbo: np.ndarray, log_likelihood: np.ndarray) -> None:
    """InvalidInput naming the first input whose bounds are NaN. Far enough from the training data the model's float32
    numbers overflow (an infinite mu, then inf - inf); such a score is no number at all, and no threshold flags a
    NaN, so answering with it would call the most anomalous input normal. In a batch of several requests the
    batcher then scores each alone, so only the culprit's request fails, with its own row in the message."""
    # One reduction each clears the common case: a sum is NaN if any term is (or if +inf meets -inf).
    if not math.isnan(np.add.reduce(elbo, axis=None) + np.add.reduce(log_likelihood, axis=None)):
        return
    unscorable = np.isnan(elbo) | np.isnan(log_likelihood)
    if unscorable.any():
        raise InvalidInput(
            f"instances[{int(np.argmax(unscorable))}]: too far from the training data to score: the model's numbers "
            "overflow (its ELBO is not a number)"
        )


def _split_features(group: _Group, features: np.ndarray | None, out: list[np.ndarray | None]) -> None:
    """Each member's rows of the group's feature scores, into out[request index]."""
    if features is not None:
        for i, start, stop in group.local_rows:
            out[i] = features[start:stop]


@dataclass(slots=True)  # per request, as PreparedElbo
class Decisions:
    anomaly_score: np.ndarray  # (B,) -log_likelihood or -elbo (the model's estimator): higher is more anomalous
    threshold: float
    is_anomaly: np.ndarray  # (B,) anomaly_score > threshold
    p_value: np.ndarray  # (B,) conformal, against the calibration scores


@dataclass(slots=True)  # per request, as PreparedElbo
class Scored:
    elbo: np.ndarray  # (B,)
    reconstruction: np.ndarray  # (B,)
    kl: np.ndarray  # (B,)
    log_likelihood: np.ndarray  # (B,) L_K, the importance-weighted bound
    n_samples: int
    iw_samples: int
    seed: int
    decisions: Decisions | None = None  # None only while the model is being calibrated
    feature_scores: np.ndarray | None = None  # (B, *input_shape), sums to -reconstruction (float32 rounding)

    def value(self, name: str) -> Any:
        """One field of ELBO_OUTPUTS by name: the scores' own, or the decisions'."""
        return _OUTPUT_GETTERS[name](self)


_SCORED_FIELDS = frozenset(f.name for f in fields(Scored))


@dataclass(frozen=True)
class Output:
    """One field of an /elbo answer."""

    name: str
    kind: Literal["per_input", "per_request", "per_feature"]  # (B,) | one value | (B, *input_shape), optional
    dtype: type  # float, bool or int
    description: str | None = None


# The fields of an /elbo answer, in the order every encoder writes them: the native JSON and its response
# model (service/http/api/inference.py, service/http/schemas.py), the OIP v2 outputs and parameters
# (service/http/api/oip.py) and the CSV columns of `vae score` (service/core/bulk.py). A new field is
# declared here once, and computed in VaeEngine.elbo_batch; the web page and the client show what they choose.
ELBO_OUTPUTS: tuple[Output, ...] = (
    Output("elbo", "per_input", float, "reconstruction - kl, nats per input"),
    Output("reconstruction", "per_input", float, "(1/L) sum_l ln p(x|z_l), nats per input"),
    Output("kl", "per_input", float, "KL(q(z|x) || N(0, I)) in closed form, nats per input"),
    Output("log_likelihood", "per_input", float, "L_K, the importance-weighted bound on ln p(x), nats"),
    Output(
        "anomaly_score",
        "per_input",
        float,
        "-log_likelihood, or -elbo for a model whose scoring.estimator is elbo (GET /v1/model): higher is more "
        "anomalous",
    ),
    Output("threshold", "per_request", float, "the anomaly score above which an input is flagged"),
    Output("is_anomaly", "per_input", bool, "anomaly_score > threshold"),
    Output("p_value", "per_input", float, "conformal: (1 + #{calibration scores >= score}) / (n_cal + 1)"),
    Output("n_samples", "per_request", int),
    Output("iw_samples", "per_request", int),
    Output("seed", "per_request", int, "the seed used; send it back to repeat the numbers"),
    Output(
        "feature_scores",
        "per_feature",
        float,
        "[B] + input_shape: each feature's share of -reconstruction (with feature_scores)",
    ),
)
PER_INPUT_OUTPUTS: tuple[Output, ...] = tuple(o for o in ELBO_OUTPUTS if o.kind == "per_input")
# Scored.value's getters, made once: every answer reads every field (a getattr on a name checked each time
# cost a few µs a request).
_OUTPUT_GETTERS = {
    o.name: attrgetter(o.name if o.name in _SCORED_FIELDS else f"decisions.{o.name}") for o in ELBO_OUTPUTS
}


class VaeEngine:
    def __init__(
        self, manifest: Manifest, runtime: Runtime, limits: Limits = Limits(), threshold: float | None = None
    ) -> None:
        self.manifest = manifest
        self.runtime = runtime
        self.limits = limits
        self._shape = list(manifest.input_shape)
        # log_jacobian builds its array on every call; a batch's maths needs it, and its sum, as they are.
        self._jacobian = manifest.log_jacobian
        self._jacobian_sum = self._jacobian.sum()
        # The serve-time override (VAE_THRESHOLD), else the calibrated default.
        calibrated = manifest.scoring.calibration.threshold if manifest.scoring else None
        self.default_threshold = threshold if threshold is not None else calibrated
        # The bound whose negative is the anomaly score: L_K, or the ELBO (service/core/artifact.py Scoring).
        self.estimator: Estimator = manifest.scoring.estimator if manifest.scoring else "iwae"

    # --- conversions between raw units and model space -------------------------------------------------
    def to_model(self, x_raw: np.ndarray) -> np.ndarray:
        """(B, D) raw -> (B, *input_shape) float32 model space; rejects values a bernoulli model cannot score."""
        x = self.manifest.preprocessing.to_model(x_raw)
        if self.manifest.likelihood == "bernoulli":
            low, high = np.minimum.reduce(x, axis=None), np.maximum.reduce(x, axis=None)
            if low >= -RANGE_TOLERANCE and high <= 1 + RANGE_TOLERANCE:
                # The common case: every value is inside the range, so finite, and clipped it fits float32; the
                # checks below only find the first bad value to name. Ufuncs called directly, in place on x (a
                # new array): np.clip and ndarray.all go through Python wrappers, a few µs a request; and only
                # when a value is within the tolerance outside [0, 1] (the clip is a no-op otherwise).
                if low < 0.0 or high > 1.0:
                    np.minimum(np.maximum(x, 0.0, out=x), 1.0, out=x)
                inside: np.ndarray = x.reshape([len(x), *self._shape]).astype(np.float32)
                return inside
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
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused just below
            x = x.reshape([len(x), *self._shape]).astype(np.float32)
        if not np.all(np.isfinite(x)):
            row, col = (int(i) for i in np.argwhere(~np.isfinite(x.reshape(len(x), -1)))[0])
            raise InvalidInput(
                f"instances[{row}]: feature {col} is {x_raw[row, col]:g}, too far from the training data to "
                "represent after preprocessing (beyond float32)"
            )
        return x

    def mean_to_raw(self, params: tuple[np.ndarray, ...]) -> np.ndarray:
        """Decoder outputs (N, *shape) -> the mean of p(x|z) in raw units, (N, *shape)."""
        mean = scoring.distribution_mean(params, self.manifest.likelihood)
        flat = mean.reshape(len(mean), -1)
        return self.manifest.preprocessing.to_raw(flat).reshape(mean.shape)

    # --- limits -------------------------------------------------------------------------------------------
    def check_draws(
        self, batch: int, n_samples: int, iw_samples: int = 0, defaulted: tuple[bool, bool] = (False, False)
    ) -> None:
        """Refuses draws beyond the limits. `defaulted` says which of n_samples and iw_samples the request left out
        (the model's calibrated L and K), so that the message names them as the model's, not the request's."""
        if n_samples > self.limits.max_samples:
            raise InvalidInput(
                f"n_samples: {n_samples}{MODEL_DEFAULT if defaulted[0] else ''} exceeds the limit of "
                f"{self.limits.max_samples} (VAE_MAX_SAMPLES)"
            )
        if iw_samples > self.limits.max_iw_samples:
            raise InvalidInput(
                f"iw_samples: {iw_samples}{MODEL_DEFAULT if defaulted[1] else ''} exceeds the limit of "
                f"{self.limits.max_iw_samples} (VAE_MAX_IW_SAMPLES)"
            )
        draws = batch * (n_samples + iw_samples)
        if draws > self.limits.max_draws:
            per = f"(n_samples {n_samples} + iw_samples {iw_samples})" if iw_samples else f"n_samples {n_samples}"
            raise LimitExceeded(
                f"{batch} instances x {per} = {draws} draws exceed the limit of "
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

    def decode_chunks(
        self, z: np.ndarray, deadline: Deadline | None = None, chunk_rows: int = scoring.DECODE_CHUNK_ROWS
    ) -> Iterator[tuple[int, np.ndarray]]:
        """z (N, d) -> (first row, mean of p(x|z) in raw units (rows, *input_shape)), `chunk_rows` rows at a
        time: the decoder's memory stays bounded however many rows, and the deadline is checked between chunks."""
        for start in range(0, len(z), chunk_rows):
            if deadline is not None:
                deadline.check()
            x = self.mean_to_raw(self.runtime.decode(z[start : start + chunk_rows].astype(np.float32)))
            if not np.all(np.isfinite(x)):
                row = start + int(np.argwhere(~np.isfinite(x.reshape(len(x), -1)))[0, 0])
                raise InvalidInput(
                    f"z[{row}]: decoding it overflows (the decoder's output is not finite); latent vectors this "
                    "far from the prior N(0, I) cannot be decoded"
                )
            yield start, x

    def decode(self, z: np.ndarray, deadline: Deadline | None = None) -> np.ndarray:
        """z (B, d) -> mean of p(x|z) in raw units, (B, *input_shape), decoded in bounded chunks."""
        out = np.empty([len(z), *self._shape], dtype=np.float64)
        for start, x in self.decode_chunks(z, deadline):
            out[start : start + len(x)] = x
        return out

    def encode_batch(self, xs: list[np.ndarray], deadline: Deadline | None = None) -> list[Encoded]:
        """Model-space inputs of many requests (from to_model) -> one encoder call -> one result each."""
        if deadline is not None:
            deadline.check()
        mu, logvar = self.runtime.encode(np.concatenate(xs))
        bounds = np.cumsum([0] + [len(x) for x in xs])
        return [Encoded(mu[a:b], logvar[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=False)]

    def decode_batch(self, zs: list[np.ndarray], deadline: Deadline | None = None) -> list[np.ndarray]:
        """Latent vectors of many requests -> shared decoder calls -> raw-unit means, one array each."""
        x = self.decode(np.concatenate(zs), deadline)
        bounds = np.cumsum([0] + [len(z) for z in zs])
        return [x[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=False)]

    def sample(
        self, x_raw: np.ndarray | None, n_samples: int, seed: int | None, decode: bool, deadline: Deadline | None = None
    ) -> Sampled:
        """z = mu + sigma * eps for each instance, or n draws from the prior N(0, I) when x_raw is None."""
        batch = 1 if x_raw is None else len(x_raw)
        self.check_draws(batch, n_samples)
        d = self.manifest.latent_dim
        eps, seed = self._noise(seed, (batch, n_samples, d))
        if x_raw is None:
            z = eps
        else:
            encoded = self.encode(x_raw)
            z = scoring.reparameterize(encoded.mu, encoded.logvar, eps)
        x = None
        if decode:
            x = self.decode(z.reshape(batch * n_samples, d), deadline).reshape([batch, n_samples, *self._shape])
        return Sampled(z, x, seed)

    def elbo(
        self, x_raw: np.ndarray, options: ElboOptions = ElboOptions(), *, deadline: Deadline | None = None
    ) -> Scored:
        """One /elbo request, alone: prepare_elbo then elbo_batch."""
        return self.elbo_batch([self.prepare_elbo(x_raw, options)], deadline)[0]

    def prepare_elbo(self, x_raw: np.ndarray, options: ElboOptions = ElboOptions()) -> PreparedElbo:
        """Everything about one /elbo request that can fail, checked before it joins a batch.

        Per-input ELBO (L = n_samples draws), L_K (K = iw_samples draws) and the anomaly decisions, in nats
        (beta = 1). L and K default to the calibration's, so the default decision uses the estimator its threshold
        was calibrated with. The ELBO's draws come first from the seeded generator, then L_K's.
        """
        scoring_config = self.manifest.scoring
        iw_samples, n_samples = options.iw_samples, options.n_samples
        if iw_samples is None:
            iw_samples = scoring_config.iw_samples if scoring_config else 1
        if n_samples is None:
            n_samples = scoring_config.n_samples if scoring_config else 1
        self.check_draws(len(x_raw), n_samples, iw_samples, (options.n_samples is None, options.iw_samples is None))
        threshold = options.threshold
        if scoring_config:
            no_override = options.threshold is None and options.fpr is None  # most requests: nothing to check
            threshold = (
                self.default_threshold if no_override else self.resolve_threshold(options.threshold, options.fpr)
            )
        return PreparedElbo(
            self.to_model(x_raw),
            n_samples,
            iw_samples,
            new_seed() if options.seed is None else options.seed,
            options.feature_scores,
            threshold,
        )

    def elbo_batch(self, requests: list[PreparedElbo], deadline: Deadline | None = None) -> list[Scored]:
        """Score many requests with one encoder call and shared decoder (or scorer) calls; each keeps its own noise.

        Every request's numbers are those it gets alone: its noise comes from its own seed, and each draw's
        log-likelihood depends only on its own input and z. With a scorer graph, ln p(x|z) is computed inside
        it (to float32 rounding of the decoder path), feature_scores or not; models without a scorer graph
        decode and score in numpy, and feature_scores always come from the decoder. The maths runs once per
        group of requests that draw alike, not once per request: a batch of one-instance requests costs a few
        numpy calls, not a few per request.
        """
        if deadline is not None:
            deadline.check()
        x = requests[0].x if len(requests) == 1 else np.concatenate([r.x for r in requests])
        bounds = list(accumulate((len(r.x) for r in requests), initial=0))  # request i has rows bounds[i]:bounds[i+1]
        groups = _groups(requests, bounds, self.runtime)
        # The encoder's own call, for what the ELBO graph does not give: another path's draws, or feature scores.
        encoded = None
        if any(g.path != "elbo" or g.feature_scores for g in groups):
            encoded = self.runtime.encode(x)
        feature_scores: list[np.ndarray | None] = [None] * len(requests)
        if len(groups) == 1:  # the common case: the group's per-row results are the batch's, no scatter needed
            reconstruction, log_likelihood, kl, features = self._score_group(groups[0], requests, x, encoded, deadline)
            _split_features(groups[0], features, feature_scores)
        else:
            reconstruction, log_likelihood, kl = np.empty(len(x)), np.empty(len(x)), np.empty(len(x))
            for group in groups:
                terms = self._score_group(group, requests, x, encoded, deadline)
                reconstruction[group.rows], log_likelihood[group.rows], kl[group.rows], features = terms
                _split_features(group, features, feature_scores)
        elbo = reconstruction - kl
        _refuse_unscorable(elbo, log_likelihood)
        decisions = self.decide(requests, bounds, scored_bound(self.estimator, elbo, log_likelihood))
        return [
            Scored(
                elbo[a:b],
                reconstruction[a:b],
                kl[a:b],
                log_likelihood[a:b],
                r.n_samples,
                r.iw_samples,
                r.seed,
                decided,
                features,
            )
            for r, a, b, decided, features in zip(
                requests, bounds[:-1], bounds[1:], decisions, feature_scores, strict=True
            )
        ]

    def _score_group(
        self,
        group: _Group,
        requests: list[PreparedElbo],
        x: np.ndarray,
        encoded: tuple[np.ndarray, np.ndarray] | None,
        deadline: Deadline | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """A group's reconstruction, L_K and KL, each (n,), and, with feature_scores, each feature's share
        (n, *input_shape). `encoded` is the batch's (mu, logvar), None when every group takes the ELBO graph
        without feature scores."""
        n_samples, jacobian = group.n_samples, self._jacobian
        eps = self._group_noise(group, requests)
        x_group = x[group.rows]
        features = None
        if group.path == "elbo":
            log_px, log_ratio, kl = scoring.elbo_terms_in_chunks(
                x_group, eps, self.runtime.elbo_terms, self.runtime.call_rows, checker(deadline)
            )
            log_weights = log_px[:, n_samples:] + log_ratio[:, n_samples:]
            if group.feature_scores:  # the shares from the decoder over the ELBO's draws, as on the other paths
                assert encoded is not None
                mu, logvar = encoded[0][group.rows], encoded[1][group.rows]
                z = scoring.reparameterize(mu, logvar, eps[:, :n_samples])
                _, features = self._log_px_by_decoder(x_group, z, n_samples, True, deadline)
        else:
            assert encoded is not None
            mu, logvar = encoded[0][group.rows], encoded[1][group.rows]
            z = scoring.reparameterize(mu, logvar, eps)  # (n, L + K, d)
            if group.path == "scorer":
                # The scores come from the scorer whether or not feature scores are asked for, so a request's
                # numbers never depend on that option; the per-feature shares come from the decoder, over the
                # ELBO's draws only, and sum to -reconstruction to float32 rounding.
                log_px = scoring.log_likelihood_draws(
                    x_group, z, self.runtime.score, self.runtime.call_rows, checker(deadline)
                )
                if group.feature_scores:
                    _, features = self._log_px_by_decoder(x_group, z[:, :n_samples], n_samples, True, deadline)
            else:
                log_px, features = self._log_px_by_decoder(x_group, z, n_samples, group.feature_scores, deadline)
            log_weights = scoring.draw_log_weights(log_px[:, n_samples:], z[:, n_samples:], eps[:, n_samples:], logvar)
            kl = scoring.kl_to_standard_normal(mu, logvar)
        # The mean as np.mean computes it (the sum, then / L), without its Python wrapper.
        reconstruction = np.add.reduce(log_px[:, :n_samples], axis=1) / n_samples + self._jacobian_sum
        log_likelihood = scoring.bound_from_log_weights(log_weights, self._jacobian_sum)
        if features is not None:
            features = -(features / n_samples + jacobian).reshape([len(features), *self._shape])
        return reconstruction, log_likelihood, kl, features

    def _group_noise(self, group: _Group, requests: list[PreparedElbo]) -> np.ndarray:
        """eps (n, L + K, d) float32: each member's draws from its own generator (service/core/seeding.py), the
        ELBO's L first, then L_K's K, so its noise is the same as alone.

        A one-instance member draws its L + K rows in one call straight into its row of the array: its L then K
        draws are consecutive there, in the order two calls would draw them. A member of several instances draws
        (rows, L, d) and then (rows, K, d), as alone.
        """
        d, n, draws = self.manifest.latent_dim, group.n_rows, group.n_samples
        eps = np.empty((n, draws + group.iw_samples, d), dtype=np.float32)
        seeds = [requests[j].seed for j, _, _ in group.local_rows]
        for (_, start, stop), rng in zip(group.local_rows, seeded_generators(seeds), strict=True):
            if stop - start == 1:
                rng.standard_normal(dtype=np.float32, out=eps[start])
            else:
                eps[start:stop, :draws] = rng.standard_normal((stop - start, draws, d), dtype=np.float32)
                eps[start:stop, draws:] = rng.standard_normal((stop - start, group.iw_samples, d), dtype=np.float32)
        return eps

    def _log_px_by_decoder(
        self, x: np.ndarray, z: np.ndarray, n_samples: int, feature_scores: bool, deadline: Deadline | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """ln p(x|z) (n, L + K) through the decoder graph and the numpy reference, in shared chunks of draws; with
        feature_scores, also each feature's log-probability summed over the ELBO's L draws, (n, D)."""
        n, draws, d = z.shape
        marks = None
        if feature_scores:  # the first L draws of every row are the ELBO's
            marks = np.tile(np.arange(draws) < n_samples, n)
        log_px, features = scoring.log_likelihood_rows(
            x.reshape(n, -1).astype(np.float64),
            np.repeat(np.arange(n), draws),
            z.reshape(n * draws, d),
            self.runtime.decode,
            self.manifest.likelihood,
            marks,
            check=checker(deadline),
        )
        return log_px.reshape(n, draws), features

    def decide(self, requests: list[PreparedElbo], bounds: list[int], bound: np.ndarray) -> list[Decisions | None]:
        """Each request's decisions against its own threshold, with one p-value lookup for the whole batch; `bound`
        is the per-input L_K or ELBO (the model's estimator), whose negative is the anomaly score."""
        if all(r.threshold is None for r in requests):  # only while the model is being calibrated
            return [None] * len(requests)
        anomaly_score = -bound
        calibration = self._calibration()
        p_value = scoring.p_values(anomaly_score, calibration.sorted_scores, calibration.n)
        thresholds = {r.threshold for r in requests}
        if len(thresholds) == 1:  # the common case: every request at the default threshold
            is_anomaly = anomaly_score > requests[0].threshold
        else:
            per_request = [np.nan if r.threshold is None else r.threshold for r in requests]
            is_anomaly = anomaly_score > np.repeat(np.asarray(per_request, dtype=np.float64), np.diff(bounds))
        return [
            None
            if r.threshold is None
            else Decisions(anomaly_score[a:b], float(r.threshold), is_anomaly[a:b], p_value[a:b])
            for r, a, b in zip(requests, bounds[:-1], bounds[1:], strict=True)
        ]

    def _calibration(self) -> Calibration:
        if self.manifest.scoring is None:
            raise ModelNotReady(f"model {self.manifest.name} has no calibration (manifest.scoring is unset)")
        return self.manifest.scoring.calibration

    def resolve_threshold(self, threshold: float | None = None, fpr: float | None = None) -> float:
        """The request's threshold, or the one at the request's fpr, or the default."""
        calibration = self._calibration()
        if threshold is not None and fpr is not None:
            raise InvalidInput(f"give threshold or fpr, not both (got threshold {threshold:g} and fpr {fpr:g})")
        if fpr is not None:
            floor = scoring.min_fpr(calibration.n)
            if not floor <= fpr < 1.0:
                raise InvalidInput(
                    f"fpr: expected a false-alarm rate in [{floor:.4g}, 1) — 1/(n+1) for this model's "
                    f"{calibration.n} calibration scores — got {fpr:g}"
                )
            return scoring.threshold_for_fpr(calibration.sorted_scores, calibration.n, fpr)
        chosen = self.default_threshold if threshold is None else threshold
        assert chosen is not None  # a calibrated model always has a default threshold
        return chosen

    def warm_up(self) -> None:
        """One real inference through both graphs; raises if the model cannot produce finite numbers."""
        example = self.manifest.preprocessing.to_raw(np.full((2, self.manifest.n_features), 0.5))
        scored = self.elbo(example, ElboOptions(n_samples=2, seed=0, iw_samples=2))
        if not np.all(np.isfinite(scored.elbo)) or not np.all(np.isfinite(scored.log_likelihood)):
            raise RuntimeError(f"warm-up inference gave a non-finite score: {scored.elbo.tolist()}")


def scored_bound(estimator: Estimator, elbo: np.ndarray, log_likelihood: np.ndarray) -> np.ndarray:
    """The per-input bound whose negative is the anomaly score under `estimator`: the ELBO, or L_K."""
    return elbo if estimator == "elbo" else log_likelihood


def score_in_chunks(
    engine: VaeEngine,
    x_raw: np.ndarray,
    options: ElboOptions,
    *,
    chunk_rows: int = 256,
    progress: bool = False,
) -> Iterator[Scored]:
    """engine.elbo over many rows (N, D), `chunk_rows` at a time; chunk i uses options.seed + i. Yields Scored.

    Calibration, `vae evaluate` and bulk scoring all go through here, so they score exactly as /elbo does.
    """
    if options.seed is None:
        raise ValueError("score_in_chunks needs a seed: chunk i is scored with seed + i")
    seed = options.seed

    with progress_bar(len(x_raw), progress, dynamic_ncols=True) as bar:
        for i, start in enumerate(range(0, len(x_raw), chunk_rows)):
            chunk = x_raw[start : start + chunk_rows]
            yield engine.elbo(chunk, replace(options, seed=seed + i))
            bar.update(len(chunk))
