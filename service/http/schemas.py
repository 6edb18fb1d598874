"""Request and response bodies. Instances stay plain JSON lists: numpy validates them in one pass
(service/core/inputs.py) instead of a pydantic model per number."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, StrictBool, StrictInt

Seed = StrictInt
INSTANCES_DOC = (
    "A batch: a list of instances in raw units. Each instance is a flat list of D numbers, "
    "or nested lists shaped like the model's input_shape (GET /v1/model)."
)


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EncodeRequest(Request):
    instances: list[Any] = Field(description=INSTANCES_DOC)


class SampleRequest(Request):
    instances: list[Any] | None = Field(None, description=INSTANCES_DOC + " Omit to draw from the prior N(0, I).")
    n_samples: StrictInt = Field(1, ge=1, description="draws per instance")
    seed: Seed | None = Field(None, ge=0, le=2**63 - 1, description="the same seed gives the same draws")
    decode: StrictBool = Field(False, description="also return x, the mean of p(x|z) in raw units")


class DecodeRequest(Request):
    z: list[Any] = Field(description="a batch of latent vectors, each latent_dim numbers")


class ElboRequest(Request):
    instances: list[Any] = Field(description=INSTANCES_DOC)
    n_samples: StrictInt = Field(1, ge=1, description="Monte Carlo draws L for the reconstruction term")
    iw_samples: StrictInt | None = Field(
        None, ge=1, description="K for log_likelihood; default: the K the threshold was calibrated with"
    )
    seed: Seed | None = Field(None, ge=0, le=2**63 - 1, description="the same seed gives the same numbers")
    feature_scores: StrictBool = Field(False, description="also return each feature's share of -reconstruction")
    threshold: FiniteFloat | None = Field(None, description="decide against this anomaly score instead")
    fpr: float | None = Field(
        None, gt=0, lt=1, description="decide at the calibration quantile for this false-alarm rate instead"
    )


class HeatmapRequest(Request):
    instances: list[Any] = Field(description=INSTANCES_DOC)
    n_samples: StrictInt = Field(8, ge=1, description="draws averaged in the per-pixel scores")
    seed: Seed | None = Field(None, ge=0, le=2**63 - 1, description="the same seed gives the same picture")


class EncodeResponse(BaseModel):
    mu: list[list[float]] = Field(description="posterior means, [B][d]")
    sigma: list[list[float]] = Field(description="posterior standard deviations, [B][d]")
    logvar: list[list[float]] = Field(description="ln sigma^2, [B][d]")


class SampleResponse(BaseModel):
    z: list[Any] = Field(description="[B][n][d] draws z = mu + sigma * eps")
    x: list[Any] | None = Field(None, description="[B][n] + input_shape: mean of p(x|z) in raw units")
    seed: int = Field(description="the seed used; send it back to repeat the draws")


class DecodeResponse(BaseModel):
    x: list[Any] = Field(description="[B] + input_shape: mean of p(x|z) in raw units")


class ElboResponse(BaseModel):
    elbo: list[float] = Field(description="reconstruction - kl, nats per input")
    reconstruction: list[float] = Field(description="(1/L) sum_l ln p(x|z_l), nats per input")
    kl: list[float] = Field(description="KL(q(z|x) || N(0, I)) in closed form, nats per input")
    log_likelihood: list[float] = Field(description="L_K, the importance-weighted bound on ln p(x), nats")
    anomaly_score: list[float] = Field(description="-log_likelihood: higher is more anomalous")
    threshold: float = Field(description="the anomaly score above which an input is flagged")
    is_anomaly: list[bool] = Field(description="anomaly_score > threshold")
    p_value: list[float] = Field(description="conformal: (1 + #{calibration scores >= score}) / (n_cal + 1)")
    feature_scores: list[Any] | None = Field(
        None, description="[B] + input_shape: each feature's share of -reconstruction (with feature_scores)"
    )
    n_samples: int
    iw_samples: int
    seed: int = Field(description="the seed used; send it back to repeat the numbers")


class ErrorResponse(BaseModel):
    error: str = Field(description="what was expected and what arrived")
    code: str = Field(description="a stable machine-readable kind, e.g. invalid_input")
