"""The Open Inference Protocol v2 as real clients from PyPI speak it, against a real `vae serve` process:
tritonclient's HTTP client (sync and aio) and KServe's InferenceRESTClient. Each answer must equal the
native API's, to the bit, and each status must be the one the protocol specifies (docs/oip-v2.md)."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as triton_aio
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from tritonclient.utils import InferenceServerException

ELBO_OUTPUTS = ["elbo", "reconstruction", "kl", "log_likelihood", "anomaly_score", "is_anomaly", "p_value"]


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    return load_digits().data[:3].reshape(3, 1, 8, 8)  # raw units, as the native API takes them


def native(base: str, path: str, body: dict) -> dict:
    response = httpx.post(f"{base}{path}", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def assert_equal(got: dict[str, np.ndarray], expected: dict) -> None:
    for name, array in got.items():
        np.testing.assert_array_equal(array, np.asarray(expected[name]), err_msg=name)


# --- tritonclient.http ----------------------------------------------------------------------------------------
def triton_input(name: str, array: np.ndarray, binary: bool = True):
    tensor = httpclient.InferInput(name, list(array.shape), "FP64")
    tensor.set_data_from_numpy(array.astype(np.float64), binary_data=binary)
    return tensor


def test_triton_health_and_metadata(served_digits):
    client = httpclient.InferenceServerClient(served_digits.removeprefix("http://"))
    version = httpx.get(f"{served_digits}/v1/model").json()["version"]
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits-elbo")
    assert client.is_model_ready("digits-elbo", "1") and client.is_model_ready("digits-elbo", version)
    assert not client.is_model_ready("digits-elbo", "2") and not client.is_model_ready("digits-heatmap")
    assert client.get_server_metadata() == {
        "name": "vae-service",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data"],
    }
    metadata = client.get_model_metadata("digits-elbo", "1")
    assert metadata == client.get_model_metadata("digits-elbo") and metadata["versions"] == [version]
    assert [o["name"] for o in metadata["outputs"]] == ELBO_OUTPUTS
    client.close()


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_triton_elbo_equals_native(served_digits, digits, binary, compression):
    client = httpclient.InferenceServerClient(served_digits.removeprefix("http://"))
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in ELBO_OUTPUTS]
    result = client.infer(
        "digits-elbo",
        [triton_input("instances", digits, binary)],
        outputs=outputs,
        parameters={"seed": 3, "n_samples": 4},
        request_compression_algorithm=compression,
    )
    expected = native(served_digits, "/elbo", {"instances": digits.tolist(), "seed": 3, "n_samples": 4})
    assert_equal({name: result.as_numpy(name) for name in ELBO_OUTPUTS}, expected)
    assert result.as_numpy("is_anomaly").dtype == np.bool_
    assert result.get_response()["parameters"]["seed"] == 3
    client.close()


def test_triton_standard_arguments_are_taken(served_digits, digits):
    """sequence_id, priority and timeout (microseconds) go into the request's parameters; none changes the answer."""
    client = httpclient.InferenceServerClient(served_digits.removeprefix("http://"))
    plain = client.infer("digits-encode", [triton_input("instances", digits)])
    given = client.infer(
        "digits-encode",
        [triton_input("instances", digits)],
        model_version="1",
        request_id="42",
        sequence_id=7,
        sequence_start=True,
        sequence_end=True,
        priority=1,
        timeout=60_000_000,
    )
    assert given.get_response()["id"] == "42"
    for name in ("mu", "logvar", "sigma"):
        np.testing.assert_array_equal(given.as_numpy(name), plain.as_numpy(name))
    assert_equal(
        {n: plain.as_numpy(n) for n in ("mu", "logvar", "sigma")},
        native(served_digits, "/encode", {"instances": digits.tolist()}),
    )
    client.close()


def test_triton_decode_and_sample_equal_native(served_digits):
    client = httpclient.InferenceServerClient(served_digits.removeprefix("http://"))
    z = np.linspace(-1, 1, 8).reshape(2, 4)
    decoded = client.infer("digits-decode", [triton_input("z", z)])
    np.testing.assert_array_equal(decoded.as_numpy("x"), native(served_digits, "/decode", {"z": z.tolist()})["x"])
    sampled = client.infer("digits-sample", [], parameters={"n_samples": 3, "seed": 7, "decode": True})
    expected = native(served_digits, "/sample", {"n_samples": 3, "seed": 7, "decode": True})
    np.testing.assert_array_equal(sampled.as_numpy("z"), np.asarray(expected["z"]))
    np.testing.assert_array_equal(sampled.as_numpy("x"), np.asarray(expected["x"]))
    client.close()


def test_triton_errors_carry_the_protocol_status(served_digits, digits):
    client = httpclient.InferenceServerClient(served_digits.removeprefix("http://"))
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("digits-heatmap", [triton_input("instances", digits)])
    assert unknown.value.status() == "404"
    assert "unknown model 'digits-heatmap'" in unknown.value.message()
    with pytest.raises(InferenceServerException) as bad:
        client.infer("digits-elbo", [triton_input("instances", digits)], parameters={"n_sample": 3})
    assert bad.value.status() == "400"
    assert bad.value.message().startswith("parameters: digits-elbo takes no parameter 'n_sample'")
    with pytest.raises(InferenceServerException) as version:
        client.infer("digits-elbo", [triton_input("instances", digits)], model_version="2")
    assert version.value.status() == "404"
    client.close()


# --- tritonclient.http.aio ------------------------------------------------------------------------------------
def test_triton_aio_equals_native(served_digits, digits):
    async def run():
        client = triton_aio.InferenceServerClient(served_digits.removeprefix("http://"))
        try:
            live, ready = await client.is_server_live(), await client.is_server_ready()
            model_ready = await client.is_model_ready("digits-elbo", "1")
            tensor = triton_aio.InferInput("instances", list(digits.shape), "FP64")
            tensor.set_data_from_numpy(digits.astype(np.float64))
            result = await client.infer(
                "digits-elbo",
                [tensor],
                parameters={"seed": 5},
                request_compression_algorithm="gzip",
                priority=1,
                timeout=60_000_000,
            )
            return live, ready, model_ready, {name: result.as_numpy(name) for name in ELBO_OUTPUTS}
        finally:
            await client.close()

    live, ready, model_ready, outputs = asyncio.run(run())
    assert live and ready and model_ready
    assert_equal(outputs, native(served_digits, "/elbo", {"instances": digits.tolist(), "seed": 5}))


# --- kserve's InferenceRESTClient -----------------------------------------------------------------------------
def test_kserve_rest_client_equals_native(served_digits, digits):
    async def run():
        client = InferenceRESTClient(RESTConfig(protocol="v2"))
        try:
            health = (
                await client.is_server_live(served_digits),
                await client.is_server_ready(served_digits),
                await client.is_model_ready(served_digits, "digits-elbo"),
                await client.is_model_ready(served_digits, "digits-heatmap"),
            )
            answers = {}
            for binary in (True, False):
                tensor = InferInput("instances", list(digits.shape), "FP64")
                tensor.set_data_from_numpy(digits.astype(np.float64), binary_data=binary)
                request = InferRequest("digits-elbo", [tensor], parameters={"seed": 9})
                response = await client.infer(served_digits, request, model_name="digits-elbo")
                answers[binary] = {out.name: out.as_numpy() for out in response.outputs}
            with pytest.raises(httpx.HTTPStatusError) as unknown:
                await client.infer(served_digits, InferRequest("digits-heatmap", [tensor]), model_name="digits-heatmap")
            return health, answers, unknown.value.response
        finally:
            await client.close()

    health, answers, unknown = asyncio.run(run())
    assert health == (True, True, True, False)
    expected = native(served_digits, "/elbo", {"instances": digits.tolist(), "seed": 9})
    for binary, outputs in answers.items():
        assert list(outputs) == ELBO_OUTPUTS, binary
        assert_equal(outputs, expected)
    assert unknown.status_code == 404 and unknown.json()["error"].startswith("unknown model 'digits-heatmap'")
