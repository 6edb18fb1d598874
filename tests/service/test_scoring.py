"""The importance-weighted bound, calibrated decisions, p-values and feature scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from service.core import scoring
from service.core.artifact import load_artifact
from service.core.engine import ElboOptions, VaeEngine
from service.core.runtime import OnnxRuntime
from tests.helpers import instances_for


@pytest.fixture(scope="module")
def engine(digits_model_dir) -> VaeEngine:
    artifact = load_artifact(digits_model_dir)
    return VaeEngine(artifact.manifest, OnnxRuntime(artifact))


@pytest.fixture(scope="module")
def digits_rows():
    from sklearn.datasets import load_digits

    return load_digits().data[:64].astype(np.float64)


def iw_bound(x, mu, logvar, eps, decode, likelihood):
    """L_K (B,) from eps (B, K, d), composed from the scoring functions VaeEngine.elbo_batch calls."""
    batch, k, d = eps.shape
    z = scoring.reparameterize(mu, logvar, eps)
    log_px, _ = scoring.log_likelihood_rows(x, np.repeat(np.arange(batch), k), z.reshape(-1, d), decode, likelihood)
    return scoring.bound_from_draws(log_px.reshape(batch, k), z, eps, logvar)


def mean_bound(engine, rows, k, seeds=range(20)):
    return np.mean([engine.elbo(rows, ElboOptions(seed=s, iw_samples=k)).log_likelihood.mean() for s in seeds])


def test_bound_is_above_the_elbo_and_grows_with_k(engine, digits_rows):
    elbo = np.mean(
        [engine.elbo(digits_rows, ElboOptions(n_samples=1, seed=s, iw_samples=1)).elbo.mean() for s in range(20)]
    )
    bounds = [mean_bound(engine, digits_rows, k) for k in (1, 10, 100)]
    assert bounds[0] == pytest.approx(elbo, abs=0.1)  # L_1 is a single-sample ELBO
    assert bounds[0] < bounds[1] < bounds[2]


def test_k1_matches_the_elbo_estimator_in_expectation(engine, digits_rows):
    rows = digits_rows[:4]
    l1 = np.array([engine.elbo(rows, ElboOptions(seed=s, iw_samples=1)).log_likelihood for s in range(400)])
    elbo = np.array([engine.elbo(rows, ElboOptions(n_samples=50, seed=s, iw_samples=1)).elbo for s in range(20)]).mean(
        axis=0
    )
    stderr = l1.std(axis=0) / math.sqrt(len(l1))
    assert np.all(np.abs(l1.mean(axis=0) - elbo) < 5 * stderr + 0.05)


def test_k1_is_exactly_the_single_draw_ratio():
    x = np.array([[1.0, 0.0]])
    mu, logvar = np.array([[0.3]]), np.array([[-0.4]])
    eps = np.array([[[0.7]]], dtype=np.float32)

    def decode(z):
        return (np.repeat(z, 2, axis=1) * np.array([2.0, -1.0], dtype=np.float32),)  # logits

    z = 0.3 + math.exp(-0.2) * 0.7
    l1, l2 = 2 * z, -z
    log_px = (l1 - math.log1p(math.exp(l1))) + (0.0 - math.log1p(math.exp(l2)))
    log_pz = -0.5 * (math.log(2 * math.pi) + z * z)
    log_qz = -0.5 * (math.log(2 * math.pi) - 0.4 + 0.49)
    bound = iw_bound(x, mu, logvar, eps, decode, "bernoulli")
    assert bound[0] == pytest.approx(log_px + log_pz - log_qz, abs=1e-5)


def test_logsumexp_is_finite_on_extreme_inputs():
    a = np.array([[1e300, 1e300], [-1e300, -1e300], [-np.inf, 5.0], [700.0, 710.0]])
    out = scoring.logsumexp(a, axis=1)
    assert np.all(np.isfinite(out))
    assert out[0] == 1e300 and out[2] == 5.0
    assert out[3] == pytest.approx(710.0 + math.log1p(math.exp(-10.0)))
    assert scoring.logsumexp(np.array([[-np.inf, -np.inf]]), axis=1)[0] == -np.inf


def test_bound_is_finite_with_extreme_decoder_outputs():
    x = np.array([[1.0, 0.0, 1.0]])

    def decode(z):
        return (np.full((len(z), 3), 1e4, dtype=np.float32) * np.sign(z[:, :1] + 1e-9),)

    eps = np.random.default_rng(0).standard_normal((1, 50, 2)).astype(np.float32)
    bound = iw_bound(x, np.zeros((1, 2)), np.full((1, 2), -12.0), eps, decode, "bernoulli")
    assert np.isfinite(bound[0])


def test_memory_stays_bounded_for_large_k(engine, digits_rows):
    scored = engine.elbo(digits_rows, ElboOptions(seed=0, iw_samples=5000))  # 320,000 decoder rows, in chunks
    assert scored.log_likelihood.shape == (64,) and np.all(np.isfinite(scored.log_likelihood))


def test_p_values_and_thresholds_on_a_known_calibration():
    calibration = np.arange(1.0, 100.0)  # 99 scores, n + 1 = 100
    assert scoring.p_values(np.array([0.0, 50.0, 99.0, 100.0]), calibration, 99).tolist() == [1.0, 0.51, 0.02, 0.01]
    threshold = scoring.threshold_for_fpr(calibration, 99, 0.05)  # 4 scores may be >= a flagged one
    assert threshold == 95.0
    flagged = np.array([95.0, 95.5]) > threshold
    assert flagged.tolist() == [False, True]
    assert (
        scoring.p_values(np.array([95.5]), calibration, 99)[0]
        <= 0.05
        < scoring.p_values(np.array([95.0]), calibration, 99)[0]
    )
    with pytest.raises(ValueError, match="below 1/\\(n\\+1\\)"):
        scoring.threshold_for_fpr(calibration, 99, 0.005)


def test_calibration_keeps_a_bounded_number_of_scores():
    kept = scoring.keep_calibration_scores(np.arange(50_000.0)[::-1], 10_000)
    assert len(kept) == 10_000 and kept[0] == 0.0 and kept[-1] == 49_999.0
    full = np.arange(50_000.0)
    approx = scoring.p_values(np.array([40_000.0]), kept, 50_000)[0]
    exact = scoring.p_values(np.array([40_000.0]), full, 50_000)[0]
    assert approx == pytest.approx(exact, abs=1e-4)


def test_false_alarm_rate_on_fresh_normal_data_matches_the_target(calibration_setup):
    model_dir, fresh = calibration_setup
    artifact = load_artifact(model_dir)
    engine = VaeEngine(artifact.manifest, OnnxRuntime(artifact))
    calibration = artifact.manifest.scoring.calibration
    assert (calibration.n, calibration.fpr, artifact.manifest.scoring.iw_samples) == (390, 0.1, 20)
    scored = engine.elbo(fresh, ElboOptions(seed=123))
    rate = scored.decisions.is_anomaly.mean()
    # Binomial sd over 497 rows plus the threshold's own sampling sd over 390 calibration rows.
    sd = math.sqrt(0.1 * 0.9 / len(fresh) + 0.1 * 0.9 / (calibration.n + 1))
    assert abs(rate - 0.1) < 3.5 * sd, rate


def test_the_false_alarm_rate_holds_with_the_draws_chosen_from_the_data(chosen_k_calibration_setup):
    model_dir, fresh = chosen_k_calibration_setup
    artifact = load_artifact(model_dir)
    engine = VaeEngine(artifact.manifest, OnnxRuntime(artifact))
    scoring_ = artifact.manifest.scoring
    # An MLP scores by the ELBO: L chosen from the data, K = 1 beside it.
    assert (scoring_.estimator, scoring_.iw_samples) == ("elbo", 1)
    assert scoring_.iw_selection is not None and scoring_.n_samples == scoring_.iw_selection.ladder[-1].k
    assert (scoring_.calibration.n, scoring_.calibration.fpr) == (390, 0.1)
    scored = engine.elbo(fresh, ElboOptions(seed=123))  # no n_samples: the chosen L, as the threshold was set
    assert (scored.n_samples, scored.iw_samples) == (scoring_.n_samples, 1)
    np.testing.assert_array_equal(scored.decisions.anomaly_score, -scored.elbo)
    rate = scored.decisions.is_anomaly.mean()
    sd = math.sqrt(0.1 * 0.9 / len(fresh) + 0.1 * 0.9 / (scoring_.calibration.n + 1))
    assert abs(rate - 0.1) < 3.5 * sd, rate


def test_p_values_on_fresh_normal_data_are_roughly_uniform(calibration_setup):
    model_dir, fresh = calibration_setup
    artifact = load_artifact(model_dir)
    engine = VaeEngine(artifact.manifest, OnnxRuntime(artifact))
    p = engine.elbo(fresh, ElboOptions(seed=7)).decisions.p_value
    assert stats.kstest(p, "uniform").pvalue > 0.001
    assert 0.4 < p.mean() < 0.6


def test_decisions_follow_the_p_values_at_the_calibrated_fpr(calibration_setup):
    model_dir, fresh = calibration_setup
    artifact = load_artifact(model_dir)
    engine = VaeEngine(artifact.manifest, OnnxRuntime(artifact))
    decisions = engine.elbo(fresh, ElboOptions(seed=1)).decisions
    assert np.array_equal(decisions.is_anomaly, decisions.p_value <= 0.1)


def test_feature_scores_sum_to_minus_reconstruction(clients):
    for model in ("digits", "tabular"):
        client = clients[model, "onnx"]
        body = client.post(
            "/elbo", json={"instances": instances_for(client, 3), "n_samples": 5, "seed": 2, "feature_scores": True}
        ).json()
        card = client.get("/v1/model").json()
        features = np.asarray(body["feature_scores"])
        assert features.shape == (3, *card["input_shape"])
        # The shares come from the decoder, the scores from the scorer graph: equal to float32 rounding.
        np.testing.assert_allclose(features.reshape(3, -1).sum(axis=1), -np.asarray(body["reconstruction"]), rtol=1e-6)
