"""The anomaly fields of /elbo, their overrides, and the errors for bad values."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app
from service.http.settings import Settings
from tests.helpers import instances_for

ZERO_DIGIT = [0.0] * 64


def test_every_response_carries_decisions(client):
    card = client.get("/v1/model").json()
    body = client.post("/elbo", json={"instances": instances_for(client, 3), "seed": 0}).json()
    scoring = card["scoring"]
    # The default request scores with the calibrated estimator and draws: an MLP by its ELBO (L chosen, K = 1).
    assert (scoring["estimator"], scoring["iw_samples"]) == ("elbo", 1)
    assert (body["n_samples"], body["iw_samples"]) == (scoring["n_samples"], scoring["iw_samples"])
    assert body["threshold"] == scoring["calibration"]["threshold"]
    np.testing.assert_array_equal(body["anomaly_score"], -np.asarray(body["elbo"]))
    assert body["is_anomaly"] == [s > body["threshold"] for s in body["anomaly_score"]]
    assert all(0 < p <= 1 for p in body["p_value"])
    assert "feature_scores" not in body


def test_request_threshold_overrides(digits_client):
    body = digits_client.post("/elbo", json={"instances": [ZERO_DIGIT], "seed": 0, "threshold": -1000.0}).json()
    assert body["threshold"] == -1000.0 and body["is_anomaly"] == [True]


def test_request_fpr_picks_the_calibration_quantile(digits_client):
    card = digits_client.get("/v1/model").json()
    scores = card["scoring"]["calibration"]["scores"]
    n = card["scoring"]["calibration"]["n"]
    body = digits_client.post("/elbo", json={"instances": [ZERO_DIGIT], "seed": 0, "fpr": 0.5}).json()
    m = int(0.5 * (n + 1)) - 1
    assert body["threshold"] == sorted(scores)[len(scores) - 1 - m]


def test_environment_threshold_replaces_the_calibrated_one(digits_model_dir):
    with TestClient(create_app(Settings(model_dir=digits_model_dir, threshold=12.5))) as client:
        assert client.post("/elbo", json={"instances": [ZERO_DIGIT], "seed": 0}).json()["threshold"] == 12.5
        assert client.get("/v1/model").json()["threshold"] == 12.5


def test_explicit_iw_samples(digits_client):
    body = digits_client.post("/elbo", json={"instances": [ZERO_DIGIT], "seed": 0, "iw_samples": 3}).json()
    assert body["iw_samples"] == 3


def test_elbo_numbers_do_not_depend_on_iw_samples(digits_client):
    request = {"instances": [ZERO_DIGIT], "seed": 5, "n_samples": 4}
    a = digits_client.post("/elbo", json=request | {"iw_samples": 1}).json()
    b = digits_client.post("/elbo", json=request | {"iw_samples": 50}).json()
    assert a["elbo"] == b["elbo"] and a["reconstruction"] == b["reconstruction"]


def error(response, status):
    assert response.status_code == status, response.text
    return response.json()["error"]


@pytest.mark.parametrize(
    "extra, status, message",
    [
        ({"iw_samples": 0}, 422, "iw_samples: Input should be greater than or equal to 1 (got 0)"),
        ({"iw_samples": 1.5}, 422, "iw_samples: Input should be a valid integer (got 1.5)"),
        ({"iw_samples": 10001}, 422, "iw_samples: 10001 exceeds the limit of 10000 (VAE_MAX_IW_SAMPLES)"),
        ({"fpr": 0}, 422, "fpr: Input should be greater than 0 (got 0)"),
        ({"fpr": 1.5}, 422, "fpr: Input should be less than 1 (got 1.5)"),
        ({"fpr": "low"}, 422, "fpr: Input should be a valid number, unable to parse string as a number (got 'low')"),
        (
            {"threshold": "high"},
            422,
            "threshold: Input should be a valid number, unable to parse string as a number (got 'high')",
        ),
        ({"threshold": 1.0, "fpr": 0.1}, 422, "give threshold or fpr, not both (got threshold 1 and fpr 0.1)"),
        ({"feature_scores": "yes"}, 422, "feature_scores: Input should be a valid boolean (got 'yes')"),
    ],
)
def test_bad_decision_options(digits_client, extra, status, message):
    assert error(digits_client.post("/elbo", json={"instances": [ZERO_DIGIT]} | extra), status) == message


def test_fpr_below_what_calibration_can_promise(digits_client):
    n = digits_client.get("/v1/model").json()["scoring"]["calibration"]["n"]
    message = error(digits_client.post("/elbo", json={"instances": [ZERO_DIGIT], "fpr": 0.0001}), 422)
    assert message == (
        f"fpr: expected a false-alarm rate in [{1 / (n + 1):.4g}, 1) — 1/(n+1) for this model's "
        f"{n} calibration scores — got 0.0001"
    )


def test_non_finite_threshold(digits_client):
    response = digits_client.post(
        "/elbo",
        content='{"instances": [[' + ",".join(["0"] * 64) + ']], "threshold": Infinity}',
        headers={"content-type": "application/json"},
    )
    assert error(response, 422) == "threshold: Input should be a finite number (got inf)"


def test_a_model_scored_by_l_k_decides_on_minus_log_likelihood(digits_model_dir):
    from service.core.artifact import load_artifact
    from service.core.engine import ElboOptions, VaeEngine
    from service.core.runtime import OnnxRuntime

    artifact = load_artifact(digits_model_dir)
    scoring = artifact.manifest.scoring.model_copy(update={"estimator": "iwae", "iw_samples": 3, "n_samples": 1})
    engine = VaeEngine(artifact.manifest.model_copy(update={"scoring": scoring}), OnnxRuntime(artifact))
    scored = engine.elbo(np.array([ZERO_DIGIT, [8.0] * 64]), ElboOptions(seed=0))
    assert (scored.n_samples, scored.iw_samples) == (1, 3)
    np.testing.assert_array_equal(scored.decisions.anomaly_score, -scored.log_likelihood)
    assert scoring.score_label == "−L_K, K = 3"


def test_a_manifest_from_before_the_elbo_estimator_scores_by_l_k():
    from service.core.artifact import Scoring

    calibration = {"n": 3, "scores": [1.0, 2.0, 3.0], "fpr": 0.25, "threshold": 3.0}
    old = Scoring.model_validate({"estimator": "iwae", "iw_samples": 8, "seed": 0, "calibration": calibration})
    assert (old.estimator, old.iw_samples, old.n_samples, old.score_label) == ("iwae", 8, 1, "−L_K, K = 8")
    new = Scoring.model_validate(
        {"estimator": "elbo", "iw_samples": 1, "n_samples": 16, "seed": 0, "calibration": calibration}
    )
    assert new.score_label == "−ELBO_L, L = 16"
