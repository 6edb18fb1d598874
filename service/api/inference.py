"""POST /encode, /sample, /decode, /elbo: request -> arrays -> engine -> response. Nothing else."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import ArrayJSONResponse, EngineDep, floats
from service.inputs import parse_instances, parse_latents
from service.schemas import (
    DecodeRequest,
    DecodeResponse,
    ElboRequest,
    ElboResponse,
    EncodeRequest,
    EncodeResponse,
    SampleRequest,
    SampleResponse,
)

router = APIRouter(tags=["inference"])


def _instances(engine, instances):
    return parse_instances(instances, engine.manifest.input_shape, engine.limits.max_instances)


@router.post("/encode", response_model=EncodeResponse)
def encode(body: EncodeRequest, engine: EngineDep) -> ArrayJSONResponse:
    """The posterior q(z|x) = N(mu, diag sigma^2) of each instance."""
    encoded = engine.encode(_instances(engine, body.instances))
    return ArrayJSONResponse(
        {"mu": floats(encoded.mu), "sigma": floats(encoded.sigma), "logvar": floats(encoded.logvar)}
    )


@router.post("/sample", response_model=SampleResponse, response_model_exclude_none=True)
def sample(body: SampleRequest, engine: EngineDep) -> ArrayJSONResponse:
    """Reparameterized draws z = mu + sigma * eps per instance, or draws from the prior without instances."""
    x_raw = None if body.instances is None else _instances(engine, body.instances)
    sampled = engine.sample(x_raw, body.n_samples, body.seed, body.decode)
    content = {"z": floats(sampled.z), "seed": sampled.seed}
    if sampled.x is not None:
        content["x"] = floats(sampled.x)
    return ArrayJSONResponse(content)


@router.post("/decode", response_model=DecodeResponse)
def decode(body: DecodeRequest, engine: EngineDep) -> ArrayJSONResponse:
    """The mean of p(x|z) in raw units for each latent vector."""
    z = parse_latents(body.z, engine.manifest.latent_dim, engine.limits.max_instances)
    return ArrayJSONResponse({"x": floats(engine.decode(z))})


@router.post("/elbo", response_model=ElboResponse, response_model_exclude_none=True)
def elbo(body: ElboRequest, engine: EngineDep) -> ArrayJSONResponse:
    """Per-input ELBO and importance-weighted log-likelihood in nats, with calibrated anomaly decisions."""
    scored = engine.elbo(
        _instances(engine, body.instances),
        n_samples=body.n_samples,
        seed=body.seed,
        iw_samples=body.iw_samples,
        feature_scores=body.feature_scores,
        threshold=body.threshold,
        fpr=body.fpr,
    )
    decisions = scored.decisions
    content = {
        "elbo": floats(scored.elbo),
        "reconstruction": floats(scored.reconstruction),
        "kl": floats(scored.kl),
        "log_likelihood": floats(scored.log_likelihood),
        "anomaly_score": floats(decisions.anomaly_score),
        "threshold": decisions.threshold,
        "is_anomaly": decisions.is_anomaly,
        "p_value": floats(decisions.p_value),
        "n_samples": scored.n_samples,
        "iw_samples": scored.iw_samples,
        "seed": scored.seed,
    }
    if scored.feature_scores is not None:
        content["feature_scores"] = floats(scored.feature_scores)
    return ArrayJSONResponse(content)
