"""Bad input of every kind: a 4xx JSON error that says what was expected and what arrived."""

from __future__ import annotations

import pytest

from tests.helpers import instances_for

ZERO_DIGIT = [0.0] * 64


def error(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "code"}
    return body["error"]


def test_wrong_instance_length(digits_client):
    message = error(digits_client.post("/elbo", json={"instances": [[1.0] * 63]}), 422)
    assert message == (
        "instances: each instance must be 64 numbers or nested lists shaped [1, 8, 8]; got instances shaped [63]"
    )


def test_wrong_nested_shape(digits_client):
    message = error(digits_client.post("/encode", json={"instances": [[[1.0] * 8] * 8]}), 422)
    assert message.endswith("got instances shaped [8, 8]")


def test_ragged_batch(digits_client):
    message = error(digits_client.post("/encode", json={"instances": [ZERO_DIGIT, [0.0] * 10]}), 422)
    assert message == (
        "instances: every item must have the same shape; instances[0] has shape [64] but instances[1] has shape [10]"
    )


def test_a_single_instance_not_wrapped_in_a_batch(digits_client):
    message = error(digits_client.post("/encode", json={"instances": ZERO_DIGIT}), 422)
    assert message.endswith("got instances shaped a single number")


@pytest.mark.parametrize("bad, shown", [("NaN", "nan"), ("Infinity", "inf"), ("-Infinity", "-inf")])
def test_non_finite_values(digits_client, bad, shown):
    body = '{"instances": [[' + ",".join(["0"] * 5 + [bad] + ["0"] * 58) + "]]}"
    response = digits_client.post("/elbo", content=body, headers={"content-type": "application/json"})
    assert error(response, 422) == f"instances[0][5]: expected a finite number, got {shown}"


def test_empty_batch(digits_client):
    assert error(digits_client.post("/elbo", json={"instances": []}), 422) == (
        "instances: expected a non-empty list, got []"
    )


@pytest.mark.parametrize(
    "value, described", [("7", "str '7'"), (None, "NoneType None"), (True, "bool True"), ({"a": 1}, "dict {'a': 1}")]
)
def test_non_numbers(digits_client, value, described):
    instance = [0.0] * 64
    instance[2] = value
    message = error(digits_client.post("/encode", json={"instances": [instance]}), 422)
    assert message == f"instances[0][2]: expected a number, got {described}"


def test_instances_not_a_list(digits_client):
    message = error(digits_client.post("/encode", json={"instances": "abc"}), 422)
    assert message == "instances: Input should be a valid list (got 'abc')"


def test_missing_instances(digits_client):
    assert error(digits_client.post("/encode", json={}), 422) == "instances: Field required"


def test_unknown_field_is_refused(digits_client):
    message = error(digits_client.post("/elbo", json={"instances": [ZERO_DIGIT], "n_sample": 5}), 422)
    assert message == "n_sample: Extra inputs are not permitted (got 5)"


def test_too_many_instances(digits_client):
    message = error(digits_client.post("/encode", json={"instances": [ZERO_DIGIT] * 4097}), 413)
    assert message == "instances: 4097 instances exceed the limit of 4096 per request (VAE_MAX_INSTANCES)"


def test_too_many_samples(digits_client):
    message = error(digits_client.post("/elbo", json={"instances": [ZERO_DIGIT], "n_samples": 10001}), 422)
    assert message == "n_samples: 10001 exceeds the limit of 10000 (VAE_MAX_SAMPLES)"


def test_too_many_draws(digits_client):
    message = error(digits_client.post("/sample", json={"instances": [ZERO_DIGIT] * 200, "n_samples": 5001}), 413)
    assert message == (
        "200 instances x n_samples 5001 = 1000200 draws exceed the limit of 1000000 per request (VAE_MAX_DRAWS); "
        "send fewer instances per request"
    )


@pytest.mark.parametrize(
    "n_samples, message",
    [
        (0, "n_samples: Input should be greater than or equal to 1 (got 0)"),
        (-3, "n_samples: Input should be greater than or equal to 1 (got -3)"),
        (2.5, "n_samples: Input should be a valid integer (got 2.5)"),
        ("4", "n_samples: Input should be a valid integer (got '4')"),
    ],
)
def test_bad_n_samples(digits_client, n_samples, message):
    assert error(digits_client.post("/elbo", json={"instances": [ZERO_DIGIT], "n_samples": n_samples}), 422) == message


@pytest.mark.parametrize(
    "seed, message",
    [
        (-1, "seed: Input should be greater than or equal to 0 (got -1)"),
        (1.5, "seed: Input should be a valid integer (got 1.5)"),
        ("x", "seed: Input should be a valid integer (got 'x')"),
    ],
)
@pytest.mark.parametrize("path", ["/elbo", "/sample"])
def test_bad_seed(digits_client, path, seed, message):
    assert error(digits_client.post(path, json={"instances": [ZERO_DIGIT], "seed": seed}), 422) == message


def test_z_of_the_wrong_dimension(digits_client):
    message = error(digits_client.post("/decode", json={"z": [[0.0, 1.0, 2.0]]}), 422)
    assert message == "z: each latent vector must be 4 numbers; got vectors shaped [3]"


def test_z_not_finite(digits_client):
    response = digits_client.post(
        "/decode", content='{"z": [[0, 0, NaN, 0]]}', headers={"content-type": "application/json"}
    )
    assert error(response, 422) == "z[0][2]: expected a finite number, got nan"


def test_malformed_json(digits_client):
    response = digits_client.post("/elbo", content='{"instances": [[1, 2', headers={"content-type": "application/json"})
    assert error(response, 400).startswith("the body is not valid JSON: ")


def test_value_outside_a_bernoulli_models_range(digits_client):
    instance = [0.0] * 64
    instance[9] = 17.0
    message = error(digits_client.post("/elbo", json={"instances": [instance]}), 422)
    assert message == "instances[0]: feature 9 is 17, outside the model's data range [0, 16] (bernoulli likelihood)"


def test_unknown_path_is_a_json_404(digits_client):
    assert error(digits_client.get("/nope"), 404) == "Not Found"


def test_wrong_method_is_a_json_405(digits_client):
    assert error(digits_client.get("/elbo"), 405) == "Method Not Allowed"


def test_gaussian_model_accepts_any_finite_value(clients):
    client = clients["tabular", "onnx"]
    instances = instances_for(client, 1)
    instances[0][0] = 1e6  # far outside the data: scored, not refused
    assert client.post("/elbo", json={"instances": instances, "seed": 0}).status_code == 200
