import math

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from service.core.artifact import Manifest, Preprocessing
from service.core.engine import ElboOptions, VaeEngine
from training.loss import (
    bernoulli_log_prob,
    elbo_terms,
    gaussian_log_prob,
    kl_to_standard_normal,
    log_likelihood,
)
from training.model import VAE, ModelConfig


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    p = Independent(Normal(torch.zeros(4), torch.ones(4)), 1)
    torch.testing.assert_close(kl_to_standard_normal(mu, logvar), kl_divergence(q, p), rtol=0, atol=1e-5)


def test_kl_matches_a_monte_carlo_estimate():
    mu = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    logvar = torch.tensor([[0.2, -0.7, 0.0]], dtype=torch.float64)
    q = Normal(mu, torch.exp(0.5 * logvar))
    z = q.sample(
        (400_000,),
    )  # (N, 1, 3)
    log_ratio = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1)  # ln q(z|x) - ln p(z)
    estimate, stderr = log_ratio.mean().item(), log_ratio.std().item() / math.sqrt(len(z))
    exact = kl_to_standard_normal(mu, logvar).item()
    assert abs(estimate - exact) < 5 * stderr
    assert exact == pytest.approx(0.5 * (0.25 + 1 + 4 + math.exp(0.2) + math.exp(-0.7) + 1 - 3 - 0.2 + 0.7 - 0.0))


def test_kl_is_zero_at_the_prior():
    assert kl_to_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)).tolist() == [0.0, 0.0]


def test_bernoulli_log_prob_matches_torch_distributions():
    x = torch.tensor([[0.0, 1.0, 0.3, 1.0]])
    logits = torch.tensor([[-3.0, 2.5, 0.1, -40.0]])
    expected = Bernoulli(logits=logits, validate_args=False).log_prob(x)  # x in [0, 1], not only {0, 1}
    torch.testing.assert_close(bernoulli_log_prob(x, logits), expected, rtol=0, atol=1e-6)


def test_bernoulli_log_prob_is_finite_for_extreme_logits():
    logits = torch.tensor([-1e4, 1e4, -100.0, 100.0])
    x = torch.tensor([1.0, 0.0, 0.0, 1.0])
    out = bernoulli_log_prob(x, logits)
    assert torch.isfinite(out).all()
    assert out.tolist() == pytest.approx([-1e4, -1e4, 0.0, 0.0], abs=1e-30)


def test_gaussian_log_prob_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    x, mean, logvar = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    expected = Normal(mean, torch.exp(0.5 * logvar)).log_prob(x)
    torch.testing.assert_close(gaussian_log_prob(x, mean, logvar), expected, rtol=0, atol=1e-5)


class _EagerRuntime:
    """The service's Runtime protocol over the eager torch model, so the engine the service runs scores it."""

    name = "eager"
    has_scorer = has_elbo = False  # the engine scores through decode and the numpy reference

    def __init__(self, model: VAE) -> None:
        self.model = model

    def encode(self, x):
        with torch.no_grad():
            mu, logvar = self.model.encode(torch.from_numpy(x))
        return mu.numpy(), logvar.numpy()

    def decode(self, z):
        with torch.no_grad():
            return tuple(t.numpy() for t in self.model.decode(torch.from_numpy(z)))


def _engine(model: VAE, scale: float) -> VaeEngine:
    """A VaeEngine over the eager model; a gaussian model's scale gives a log-Jacobian of -ln scale per feature."""
    config = model.config
    manifest = Manifest.model_construct(
        input_shape=list(config.input_shape),
        latent_dim=config.latent_dim,
        likelihood=config.likelihood,
        preprocessing=Preprocessing(offset=0.0, scale=scale),
        scoring=None,
    )
    return VaeEngine(manifest, _EagerRuntime(model))


def _engine_noise(seed: int, batch: int, n_samples: int, iw_samples: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The engine's noise for a seed: the ELBO's draws, then L_K's, each (B, L, d) -> torch's (L, B, d)."""
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal((batch, n_samples, d), dtype=np.float32)
    eps_iw = rng.standard_normal((batch, iw_samples, d), dtype=np.float32)
    return torch.from_numpy(eps).permute(1, 0, 2), torch.from_numpy(eps_iw).permute(1, 0, 2)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_elbo_terms_match_the_engine_the_service_runs(likelihood):
    torch.manual_seed(0)
    model = VAE(ModelConfig(input_shape=[2, 3], latent_dim=3, hidden=[16], likelihood=likelihood)).eval()
    x = torch.rand(5, 2, 3)
    # The engine moves a gaussian density to raw units by -ln scale per feature: 6 x -0.125 = -0.75.
    # Bernoulli likelihoods are probabilities of the scaled values and take no change of variables.
    scale, log_jacobian = (math.exp(0.125), -0.75) if likelihood == "gaussian" else (1.0, 0.0)
    eps, _ = _engine_noise(seed=7, batch=5, n_samples=4, iw_samples=1, d=3)  # (L, B, d)
    with torch.no_grad():
        terms = elbo_terms(model, x, eps, log_jacobian=log_jacobian)

    x_raw = x.reshape(5, -1).double().numpy() * scale
    result = _engine(model, scale).elbo(x_raw, ElboOptions(n_samples=4, seed=7, iw_samples=1))
    np.testing.assert_allclose(result.reconstruction, terms.reconstruction.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(result.kl, terms.kl.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(result.elbo, terms.elbo.numpy(), rtol=0, atol=1e-4)


def test_log_likelihood_sums_over_every_feature():
    x = torch.zeros(2, 1, 2, 2)
    logits = torch.zeros(2, 1, 2, 2)
    assert log_likelihood(x, (logits,), "bernoulli").tolist() == pytest.approx([4 * -math.log(2)] * 2)


def test_loss_weights_kl_by_beta():
    from training.loss import ElboTerms

    terms = ElboTerms(torch.tensor([-10.0, -20.0]), torch.tensor([[2.0, 0.0], [3.0, 1.0]]))
    assert terms.elbo.tolist() == [-12.0, -24.0]
    assert terms.loss(beta=0.5).item() == 16.5
    assert terms.loss().item() == 18.0


def test_free_bits_floor_each_dimensions_mean_kl():
    from training.loss import ElboTerms

    terms = ElboTerms(torch.tensor([-10.0, -20.0]), torch.tensor([[2.0, 0.0], [3.0, 1.0]]))
    # batch-mean KL per dimension is [2.5, 0.5]; a floor of 1 nat lifts the second to 1
    assert terms.loss(free_bits=1.0).item() == 15.0 + 3.5
    assert terms.loss(free_bits=0.1).item() == 18.0


@pytest.mark.parametrize(
    "likelihood, noise",
    [("bernoulli", "feature"), ("gaussian", "feature"), ("gaussian", "shared"), ("gaussian", "diagonal")],
)
def test_importance_weighted_bound_matches_the_engine_the_service_runs(likelihood, noise):
    from training.loss import importance_weighted_bound

    torch.manual_seed(1)
    config = ModelConfig(
        input_shape=[6], latent_dim=3, hidden=[] if noise == "shared" else [16], likelihood=likelihood, noise=noise
    )
    model = VAE(config).eval()
    if config.constant_noise:
        with torch.no_grad():
            model.decoder.constant_logvar.value.uniform_(-2.0, 1.0)
    x = torch.rand(5, 6)
    scale, log_jacobian = (math.exp(0.125), -0.75) if likelihood == "gaussian" else (1.0, 0.0)
    _, eps = _engine_noise(seed=11, batch=5, n_samples=1, iw_samples=7, d=3)  # (K, B, d)
    with torch.no_grad():
        bound = importance_weighted_bound(model, x, eps, log_jacobian=log_jacobian)

    expected = _engine(model, scale).elbo(x.double().numpy() * scale, ElboOptions(n_samples=1, seed=11, iw_samples=7))
    np.testing.assert_allclose(bound.numpy(), expected.log_likelihood, rtol=0, atol=1e-4)


def test_a_shared_noise_decoder_has_one_variance_for_every_feature():
    model = VAE(ModelConfig(input_shape=[1, 4, 5], latent_dim=2, hidden=[], likelihood="gaussian", noise="shared"))
    with torch.no_grad():
        model.decoder.constant_logvar.value.fill_(-1.5)
        mean, logvar = model.decode(torch.randn(3, 2))
        model.decoder.constant_logvar.value.fill_(-100.0)  # clamped like any decoder log-variance
        _, clamped = model.decode(torch.randn(3, 2))
    assert mean.shape == logvar.shape == (3, 1, 4, 5)
    assert torch.equal(logvar, torch.full((3, 1, 4, 5), -1.5))
    assert torch.equal(clamped, torch.full((3, 1, 4, 5), -6.0))
    assert sum(p.numel() for p in model.decoder.parameters()) == 2 * 20 + 20 + 1  # weights, biases, the variance


def test_a_diagonal_noise_decoder_has_one_variance_per_feature_whatever_z():
    model = VAE(ModelConfig(input_shape=[1, 4, 5], latent_dim=2, hidden=[8], likelihood="gaussian", noise="diagonal"))
    values = torch.linspace(-7.0, 7.0, 20).reshape(1, 4, 5)
    with torch.no_grad():
        model.decoder.constant_logvar.value.copy_(values)
        mean, logvar = model.decode(torch.randn(3, 2))
    assert mean.shape == logvar.shape == (3, 1, 4, 5)
    assert torch.equal(logvar, values.clamp(-6.0, 6.0).expand(3, 1, 4, 5))  # the same for every z, clamped
    # The mean's last layer and the 20 variances: no log-variance output computed from z.
    assert model.decoder.net[-1].out_features == 20 and model.decoder.constant_logvar.value.numel() == 20


def test_a_checkpoint_written_before_diagonal_noise_still_loads():
    from training.export import model_from_checkpoint

    config = ModelConfig(input_shape=[6], latent_dim=2, hidden=[], likelihood="gaussian", noise="shared")
    state = VAE(config).state_dict()
    state["decoder.shared.value"] = torch.tensor(-1.25)  # the name the weight had then
    del state["decoder.constant_logvar.value"]
    model = model_from_checkpoint({"model_config": config.to_dict(), "state_dict": state})
    assert model.decoder.constant_logvar.value.item() == -1.25
