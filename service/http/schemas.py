"""Request and response bodies. Instances stay plain JSON lists: numpy validates them in one pass
(service/core/inputs.py) instead of a pydantic model per number."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, StrictBool, StrictInt, create_model

from service.core.engine import ELBO_OUTPUTS, Output

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
    n_samples: StrictInt | None = Field(
        None,
        ge=1,
        description="Monte Carlo draws L for the reconstruction term; default: the L the threshold was calibrated "
        "with (1 for a model scored by log_likelihood)",
    )
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
    seed: int = Field(description="the seed used; send it back to repeat the draws; a fresh one is below 2**53")


class DecodeResponse(BaseModel):
    x: list[Any] = Field(description="[B] + input_shape: mean of p(x|z) in raw units")


def _response_field(output: Output) -> tuple[Any, Any]:
    if output.kind == "per_input":
        return list[output.dtype], Field(description=output.description)
    if output.kind == "per_feature":
        return list[Any] | None, Field(None, description=output.description)
    return output.dtype, Field(description=output.description)


# /elbo's answer, derived from the one declaration of its fields (service/core/engine.py's ELBO_OUTPUTS).
ElboResponse = create_model("ElboResponse", **{o.name: _response_field(o) for o in ELBO_OUTPUTS})


class ErrorResponse(BaseModel):
    error: str = Field(description="what was expected and what arrived")
    code: str = Field(description="a stable machine-readable kind, e.g. invalid_input")
