"""Request and response bodies. Instances stay plain JSON lists: numpy validates them in one pass
(service/inputs.py) instead of a pydantic model per number."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

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
    seed: Seed | None = Field(None, ge=0, le=2**63 - 1, description="the same seed gives the same numbers")


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
    n_samples: int
    seed: int = Field(description="the seed used; send it back to repeat the numbers")


class ErrorResponse(BaseModel):
    error: str = Field(description="what was expected and what arrived")
    code: str = Field(description="a stable machine-readable kind, e.g. invalid_input")
