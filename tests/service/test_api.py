"""Every endpoint over HTTP, for both models (bernoulli digits, gaussian tabular) and both runtimes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.helpers import instances_for


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "alive"}


def test_readyz_after_warm_up(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


def test_model_card(client):
    card = client.get("/v1/model").json()
    assert card["format_version"] == 1
    assert card["runtime"] in ("onnx", "torchscript")
    assert card["limits"] == {
        "max_instances": 4096,
        "max_samples": 10000,
        "max_iw_samples": 10000,
        "max_draws": 1000000,
        "max_response_bytes": 64 * 1024 * 1024,
        "max_body_bytes": 64 * 1024 * 1024,
    }
    assert card["threshold"] == card["scoring"]["calibration"]["threshold"]
    assert set(card) >= {"input_shape", "latent_dim", "likelihood", "preprocessing", "graphs", "training", "parity"}


def test_encode_shapes_and_sigma(client):
    body = client.post("/encode", json={"instances": instances_for(client, 3)}).json()
    d = client.get("/v1/model").json()["latent_dim"]
    assert np.shape(body["mu"]) == (3, d)
    np.testing.assert_allclose(np.asarray(body["sigma"]), np.exp(0.5 * np.asarray(body["logvar"])), rtol=1e-6)


def test_flat_and_nested_instances_agree(digits_client):
    nested = instances_for(digits_client, 2)
    flat = np.asarray(nested).reshape(2, 64).tolist()
    a = digits_client.post("/encode", json={"instances": nested}).json()
    b = digits_client.post("/encode", json={"instances": flat}).json()
    assert a == b


def test_decode_returns_input_shape_in_raw_units(client):
    card = client.get("/v1/model").json()
    response = client.post("/decode", json={"z": [[0.0] * card["latent_dim"], [1.0] * card["latent_dim"]]})
    assert response.status_code == 200
    x = np.asarray(response.json()["x"])
    assert x.shape == (2, *card["input_shape"])
    if card["likelihood"] == "bernoulli":  # sigmoid mean mapped back to raw 0..16
        assert x.min() >= 0.0 and x.max() <= 16.0


def test_sample_from_posterior_is_reparameterized(client):
    instances = instances_for(client, 2)
    encoded = client.post("/encode", json={"instances": instances}).json()
    body = client.post("/sample", json={"instances": instances, "n_samples": 5, "seed": 3}).json()
    z = np.asarray(body["z"])
    d = len(encoded["mu"][0])
    assert z.shape == (2, 5, d)
    assert body["seed"] == 3
    eps = np.random.default_rng(3).standard_normal((2, 5, d), dtype=np.float32)
    expected = np.asarray(encoded["mu"])[:, None] + np.asarray(encoded["sigma"])[:, None] * eps
    np.testing.assert_allclose(z, expected, rtol=0, atol=1e-5)


def test_sample_from_prior(client):
    body = client.post("/sample", json={"n_samples": 4, "seed": 11, "decode": True}).json()
    card = client.get("/v1/model").json()
    z = np.asarray(body["z"])
    assert z.shape == (1, 4, card["latent_dim"])
    np.testing.assert_allclose(z, np.random.default_rng(11).standard_normal(z.shape, dtype=np.float32), atol=0)
    assert np.shape(body["x"]) == (1, 4, *card["input_shape"])


def test_sample_decode_equals_decode_of_z(client):
    body = client.post(
        "/sample", json={"instances": instances_for(client, 2), "n_samples": 3, "seed": 5, "decode": True}
    ).json()
    z = np.asarray(body["z"])
    decoded = client.post("/decode", json={"z": z.reshape(6, -1).tolist()}).json()["x"]
    np.testing.assert_allclose(np.asarray(body["x"]).reshape(6, -1), np.asarray(decoded).reshape(6, -1), atol=1e-6)


def test_sample_without_decode_has_no_x(client):
    body = client.post("/sample", json={"n_samples": 2, "seed": 1}).json()
    assert set(body) == {"z", "seed"}


def test_elbo_is_reconstruction_minus_kl(client):
    body = client.post("/elbo", json={"instances": instances_for(client, 4), "n_samples": 3, "seed": 0}).json()
    assert body["n_samples"] == 3 and body["seed"] == 0
    for elbo, rec, kl in zip(body["elbo"], body["reconstruction"], body["kl"], strict=False):
        assert elbo == pytest.approx(rec - kl, abs=1e-9)
        assert kl >= 0.0 and math.isfinite(elbo)


def test_elbo_kl_equals_closed_form_of_encode(client):
    instances = instances_for(client, 3)
    encoded = client.post("/encode", json={"instances": instances}).json()
    mu, logvar = np.asarray(encoded["mu"]), np.asarray(encoded["logvar"])
    expected = 0.5 * np.sum(mu**2 + np.exp(logvar) - 1 - logvar, axis=1)
    kl = client.post("/elbo", json={"instances": instances, "seed": 0}).json()["kl"]
    np.testing.assert_allclose(kl, expected, rtol=1e-5, atol=1e-5)


def test_same_seed_same_numbers(client):
    request = {"instances": instances_for(client, 3), "n_samples": 4, "seed": 1234}
    assert client.post("/elbo", json=request).json() == client.post("/elbo", json=request).json()
    sample = {"instances": instances_for(client, 2), "n_samples": 3, "seed": 9, "decode": True}
    assert client.post("/sample", json=sample).json() == client.post("/sample", json=sample).json()


def test_different_seeds_different_draws(client):
    request = {"instances": instances_for(client, 2), "n_samples": 2}
    a = client.post("/elbo", json=request | {"seed": 1}).json()["reconstruction"]
    b = client.post("/elbo", json=request | {"seed": 2}).json()["reconstruction"]
    assert a != b


def test_unseeded_request_reports_a_seed_that_repeats_it(client):
    request = {"instances": instances_for(client, 2), "n_samples": 2}
    first = client.post("/elbo", json=request).json()
    again = client.post("/elbo", json=request | {"seed": first["seed"]}).json()
    assert again == first


def test_fresh_seeds_survive_a_float64_round_trip(client):
    request = {"instances": instances_for(client, 2), "n_samples": 2}
    for _ in range(20):
        first = client.post("/elbo", json=request).json()
        assert 0 <= first["seed"] < 2**53
        as_double = int(float(first["seed"]))  # what a JavaScript client reads and sends back
        assert as_double == first["seed"]
        again = client.post("/elbo", json=request | {"seed": as_double}).json()
        assert again == first


@pytest.mark.parametrize("model", ["digits", "tabular"])
def test_runtimes_agree_on_seeded_requests(clients, model):
    onnx, torchscript = clients[model, "onnx"], clients[model, "torchscript"]
    instances = instances_for(onnx, 5)
    for path, body in [
        ("/encode", {"instances": instances}),
        ("/elbo", {"instances": instances, "n_samples": 6, "seed": 7}),
        ("/sample", {"instances": instances, "n_samples": 2, "seed": 7, "decode": True}),
        ("/decode", {"z": [[0.3] * len(onnx.post("/encode", json={"instances": instances[:1]}).json()["mu"][0])]}),
    ]:
        a, b = onnx.post(path, json=body).json(), torchscript.post(path, json=body).json()
        for key in a:
            np.testing.assert_allclose(
                np.asarray(a[key]), np.asarray(b[key]), rtol=0, atol=1e-4, err_msg=f"{path} {key}"
            )


def test_more_samples_shrink_the_reconstruction_variance(digits_client):
    instances = instances_for(digits_client, 1)

    def spread(n):
        values = [
            digits_client.post("/elbo", json={"instances": instances, "n_samples": n, "seed": s}).json()[
                "reconstruction"
            ][0]
            for s in range(12)
        ]
        return np.std(values)

    assert spread(64) < spread(1)


def test_openapi_has_an_example_for_every_endpoint(onnx_client):
    schema = onnx_client.get("/openapi.json").json()
    for path in ["/encode", "/sample", "/decode", "/elbo"]:
        example = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["example"]
        assert onnx_client.post(path, json=example).status_code == 200, path
    assert onnx_client.get("/docs").status_code == 200


def npy_bytes(array) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array))
    return buffer.getvalue()


def test_binary_npy_input_equals_json(client):
    instances = instances_for(client, 4)
    body = npy_bytes(np.asarray(instances, dtype=np.float32))
    headers = {"content-type": "application/x-npy"}
    binary = client.post("/elbo?n_samples=3&iw_samples=5&seed=9", content=body, headers=headers)
    assert binary.status_code == 200, binary.text
    sent = client.post("/elbo", json={"instances": instances, "n_samples": 3, "iw_samples": 5, "seed": 9}).json()
    np.testing.assert_allclose(binary.json()["elbo"], sent["elbo"], rtol=1e-6)
    encoded = client.post("/encode", content=body, headers=headers).json()
    assert np.shape(encoded["mu"]) == (4, client.get("/v1/model").json()["latent_dim"])


@pytest.mark.parametrize(
    "array, status, message",
    [
        (
            np.zeros((2, 63)),
            422,
            "instances: each instance must be 64 numbers or nested lists shaped [1, 8, 8]; got instances shaped [63]",
        ),
        (np.array([["a"] * 64]), 422, "instances: expected a numeric array, got dtype <U1"),
        (np.zeros(64), 422, "instances: expected a non-empty batch shaped (B, ...), got shape [64]"),
        (np.full((1, 64), np.nan), 422, "instances[0][0]: expected a finite number, got nan"),
    ],
)
def test_bad_binary_input(digits_client, array, status, message):
    response = digits_client.post("/elbo", content=npy_bytes(array), headers={"content-type": "application/x-npy"})
    assert response.status_code == status and response.json()["error"] == message


def test_unreadable_binary_input(digits_client):
    response = digits_client.post("/elbo", content=b"not npy", headers={"content-type": "application/x-npy"})
    assert response.status_code == 400
    assert response.json()["error"].startswith("the body is not a readable .npy array: ")


def test_binary_input_options_are_validated(digits_client):
    response = digits_client.post(
        "/elbo?n_samples=0", content=npy_bytes(np.zeros((1, 64))), headers={"content-type": "application/x-npy"}
    )
    assert response.status_code == 422
    assert response.json()["error"] == "n_samples: Input should be greater than or equal to 1 (got 0)"


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 40])
@pytest.mark.parametrize("feature_scores", [False, True])
def test_elbo_answers_are_the_same_bytes_whether_built_from_lists_or_arrays(digits_model_dir, rows, feature_scores):
    import orjson

    from service.core.artifact import load_artifact
    from service.core.engine import ElboOptions, VaeEngine
    from service.core.runtime import load_runtime
    from service.http.api.deps import floats
    from service.http.api.inference import _JSON_FIELDS, elbo_content

    artifact = load_artifact(digits_model_dir)
    engine = VaeEngine(artifact.manifest, load_runtime(artifact, "onnx"))
    from sklearn.datasets import load_digits

    x = load_digits().data[:rows]
    scored = engine.elbo(x, ElboOptions(n_samples=2, iw_samples=3, seed=5, feature_scores=feature_scores))
    arrays = {
        name: floats(scored.value(name)) if as_float else scored.value(name)
        for name, as_float in _JSON_FIELDS
        if scored.value(name) is not None
    }
    answer = orjson.dumps(elbo_content(scored), option=orjson.OPT_SERIALIZE_NUMPY)
    assert answer == orjson.dumps(arrays, option=orjson.OPT_SERIALIZE_NUMPY)
    assert (type(elbo_content(scored)["elbo"]) is list) == (rows <= 4)
