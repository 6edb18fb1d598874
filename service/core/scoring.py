"""The ELBO's maths in numpy, for serving and for calibration. No torch here.

Mirrors training/loss.py (a test pins the two together). Every result is in nats per input, float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

LOG_2PI = math.log(2.0 * math.pi)
# Rows per decoder call: bounds memory whatever the batch size and number of draws.
DECODE_CHUNK_ROWS = 8192

Decode = Callable[[np.ndarray], tuple[np.ndarray, ...]]  # z (N, d) float32 -> params, each (N, *shape)
# The scorer graph: x (B, *shape) float32, z (B, K, d) float32 -> ln p(x_b|z_bk) (B, K) float64, computed as
# log_prob_per_feature(...).sum(axis=1) computes it (tests pin the two together).
Score = Callable[[np.ndarray, np.ndarray], np.ndarray]
# The ELBO graph: x, eps (B, S, d) float32 -> ln p(x|z) (B, S), ln p(z) - ln q(z|x) (B, S) and the KL (B,),
# float64 in model space, as this module computes them from the encoder's and the scorer's outputs (tests pin the
# two together).
ElboTerms = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]

# np.sum's own reduction without its Python wrapper: the same sums, bit for bit, for a few µs less per call
# on the small arrays of one-instance requests.
_sum = np.add.reduce


def kl_to_standard_normal(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """KL(N(mu, diag e^logvar) || N(0, I)) per row, (B, d) -> (B,); 1/2 sum(mu^2 + sigma^2 - 1 - ln sigma^2)."""
    mu, logvar = mu.astype(np.float64), logvar.astype(np.float64)
    kl: np.ndarray = 0.5 * _sum(mu**2 + np.exp(logvar) - 1.0 - logvar, axis=1)
    return kl


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
    z: np.ndarray = (mu[:, None, :] + np.exp(0.5 * logvar)[:, None, :] * eps).astype(np.float32, copy=False)
    return z


def log_likelihood_rows(
    x: np.ndarray,
    owner: np.ndarray,
    z: np.ndarray,
    decode: Decode,
    likelihood: str,
    feature_rows: np.ndarray | None = None,
    chunk_rows: int = DECODE_CHUNK_ROWS,
    check: Callable[[], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """ln p(x_owner[n] | z_n) for every draw n: x (B, D) model space, owner (N,) row of x, z (N, d) -> (N,).

    With `feature_rows` (N,) bool, also each input's per-feature log-probabilities summed over its
    marked draws, (B, D). Decodes `chunk_rows` draws at a time and gathers x per chunk, so memory stays
    bounded however many draws there are. `check`, when given, is called before each chunk and raises to
    stop the work (a request's deadline).
    """
    out = np.empty(len(z), dtype=np.float64)
    features = np.zeros_like(x, dtype=np.float64) if feature_rows is not None else None
    for start in range(0, len(z), chunk_rows):
        if check is not None:
            check()
        stop = min(start + chunk_rows, len(z))
        params = tuple(p.reshape(stop - start, -1) for p in decode(z[start:stop]))
        logp = log_prob_per_feature(x[owner[start:stop]], params, likelihood)  # (rows, D)
        out[start:stop] = logp.sum(axis=1)
        if features is not None and feature_rows is not None:  # both given, or neither
            marked = feature_rows[start:stop]
            np.add.at(features, owner[start:stop][marked], logp[marked])
    return out, features


def log_likelihood_draws(
    x: np.ndarray,
    z: np.ndarray,
    score: Score,
    chunk_rows: int = DECODE_CHUNK_ROWS,
    check: Callable[[], None] | None = None,
) -> np.ndarray:
    """ln p(x_b | z_bk) through a scorer graph: x (B, *shape) model space float32, z (B, K, d) -> (B, K) float64.

    At most `chunk_rows` draws go into one call (whole rows of draws when K fits, else slices of one row's
    draws), so memory stays bounded; `check` is called before each call, as in log_likelihood_rows.
    """
    batch, draws = z.shape[0], z.shape[1]
    out = np.empty((batch, draws), dtype=np.float64)
    rows_per_call, draws_per_call = max(1, chunk_rows // max(draws, 1)), min(draws, chunk_rows)
    for row in range(0, batch, rows_per_call):
        rows = slice(row, row + rows_per_call)
        for first in range(0, draws, draws_per_call):
            if check is not None:
                check()
            cols = slice(first, first + draws_per_call)
            out[rows, cols] = score(x[rows], z[rows, cols])
    return out


def elbo_terms_in_chunks(
    x: np.ndarray,
    eps: np.ndarray,
    elbo_terms: ElboTerms,
    chunk_rows: int = DECODE_CHUNK_ROWS,
    check: Callable[[], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ELBO graph over x (B, *shape) and eps (B, S, d), whole rows of draws at a time, at most `chunk_rows`
    draws per call (at least one row), so memory stays bounded; `check` is called before each call. Returns its
    ln p(x|z) (B, S), ln p(z) - ln q(z|x) (B, S) and KL (B,)."""
    batch, draws = eps.shape[0], eps.shape[1]
    rows_per_call = max(1, chunk_rows // max(draws, 1))
    if rows_per_call >= batch:  # the common case: one call
        if check is not None:
            check()
        return elbo_terms(x, eps)
    log_px, log_ratio, kl = np.empty((batch, draws)), np.empty((batch, draws)), np.empty(batch)
    for row in range(0, batch, rows_per_call):
        if check is not None:
            check()
        rows = slice(row, row + rows_per_call)
        log_px[rows], log_ratio[rows], kl[rows] = elbo_terms(x[rows], eps[rows])
    return log_px, log_ratio, kl


def logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    """ln sum exp(a) along axis without overflow; -inf where every term is -inf."""
    if a.shape[axis] == 1:
        # One term (K = 1, the common request): the shifted sum below is exactly a + ln 1 = a + 0.0, so skip it.
        one: np.ndarray = np.squeeze(a, axis=axis) + 0.0
        return one
    peak = np.maximum.reduce(a, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        out: np.ndarray = np.squeeze(peak, axis=axis) + np.log(_sum(np.exp(a - peak), axis=axis))
    return out


def bound_from_draws(
    log_px: np.ndarray, z: np.ndarray, eps: np.ndarray, logvar: np.ndarray, log_jacobian: float = 0.0
) -> np.ndarray:
    """L_K from ln p(x|z_k) (B, K), the draws z (B, K, d), their noise eps and the posterior logvar (B, d);
    `log_jacobian` is the model's summed change of variables to raw units (the engine sums it once).

    Each draw's weight is ln p(x|z) + ln p(z) - ln q(z|x), with ln p(z) = -1/2 sum(ln 2pi + z^2) and, since
    z = mu + sigma * eps, ln q(z|x) = -1/2 sum(ln 2pi + ln sigma^2 + eps^2): the ln 2pi terms cancel, leaving
    ln p(x|z) + 1/2 sum(eps^2 - z^2 + ln sigma^2). The sums of squares are taken by einsum in float64 straight
    from the float32 draws (no float64 copies of them): a third of the time on K = 100 draws.
    """
    return bound_from_log_weights(draw_log_weights(log_px, z, eps, logvar), log_jacobian)


def draw_log_weights(log_px: np.ndarray, z: np.ndarray, eps: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """Each draw's log-weight ln p(x|z) + ln p(z) - ln q(z|x), (B, K) float64, from ln p(x|z) (B, K), the draws z
    and their noise eps (B, K, d) and the posterior logvar (B, d): see bound_from_draws."""
    log_weights: np.ndarray = log_px + log_prior_ratio(z, eps, logvar)
    return log_weights


def log_prior_ratio(z: np.ndarray, eps: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """ln p(z) - ln q(z|x) = 1/2 sum(eps^2 - z^2 + ln sigma^2) for each draw, (B, K) float64 (see bound_from_draws)."""
    half = np.einsum("bkd,bkd->bk", eps, eps, dtype=np.float64) - np.einsum("bkd,bkd->bk", z, z, dtype=np.float64)
    half += _sum(logvar, axis=1, dtype=np.float64)[:, None]
    ratio: np.ndarray = 0.5 * half
    return ratio


def bound_from_log_weights(log_weights: np.ndarray, log_jacobian: float = 0.0) -> np.ndarray:
    """L_K from the K draws' log-weights ln p(x|z_k) + ln p(z_k) - ln q(z_k|x), (B, K): their log-mean-exp."""
    return logsumexp(log_weights, axis=1) - math.log(log_weights.shape[1]) + log_jacobian


def p_values(scores: np.ndarray, calibration: np.ndarray, n_calibration: int) -> np.ndarray:
    """Conformal p-values (1 + #{calibration scores >= s}) / (n + 1); calibration sorted ascending.

    When only evenly spaced order statistics of n scores are kept, the count is scaled up to n.
    """
    count = len(calibration) - calibration.searchsorted(scores, side="left")  # the method: no Python wrapper
    if len(calibration) < n_calibration:
        count = np.round(count * n_calibration / len(calibration))
    return (1.0 + count) / (n_calibration + 1.0)


def min_fpr(n_calibration: int) -> float:
    """The smallest false-alarm rate n calibration scores can promise: 1 / (n + 1)."""
    return 1.0 / (n_calibration + 1.0)


def threshold_for_fpr(calibration: np.ndarray, n_calibration: int, fpr: float) -> float:
    """The threshold t such that flagging scores > t flags exactly the p-values <= fpr.

    That is the (m+1)-th largest calibration score, m = floor(fpr (n + 1)) - 1 the number of calibration
    scores allowed at or above a flagged score; by exchangeability the false-alarm rate is then <= fpr.
    """
    m = math.floor(fpr * (n_calibration + 1) + 1e-9) - 1
    if m < 0:
        raise ValueError(
            f"fpr {fpr:g} is below 1/(n+1) = {min_fpr(n_calibration):.3g} for {n_calibration} calibration scores"
        )
    index = len(calibration) - 1 - round(m * len(calibration) / n_calibration)
    return float(calibration[max(index, 0)])


def keep_calibration_scores(scores: np.ndarray, limit: int) -> np.ndarray:
    """All scores sorted, or `limit` evenly spaced order statistics of them (the extremes included)."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    if len(ordered) <= limit:
        return ordered
    kept: np.ndarray = ordered[np.round(np.linspace(0, len(ordered) - 1, limit)).astype(int)]
    return kept
