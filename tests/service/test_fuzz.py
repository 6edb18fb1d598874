"""Property-based fuzzing of every endpoint: no input, however odd, gets a 5xx."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=20)
NUMBERS = st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-(10**20), max_value=10**20)


def rows(width):
    return st.lists(st.lists(NUMBERS, min_size=width, max_size=width), min_size=1, max_size=3)


def bodies(width: int, latent: int):
    """Mostly well-shaped bodies with wild values, plus arbitrary JSON in every field."""
    options = {
        "instances": rows(width) | JSON_VALUES,
        "n_samples": st.integers(min_value=-5, max_value=20_000) | JSON_VALUES,
        "iw_samples": st.integers(min_value=-5, max_value=20_000) | JSON_VALUES,
        "seed": st.integers(min_value=-(2**70), max_value=2**70) | JSON_VALUES,
        "threshold": NUMBERS | JSON_VALUES,
        "fpr": st.floats() | JSON_VALUES,
        "decode": st.booleans() | JSON_VALUES,
        "feature_scores": st.booleans() | JSON_VALUES,
        "z": rows(latent) | JSON_VALUES,
    }
    return st.fixed_dictionaries({}, optional=options) | JSON_VALUES


PATHS = ["/encode", "/sample", "/decode", "/elbo", "/heatmap"]


@pytest.mark.parametrize("model", ["digits", "tabular"])
@pytest.mark.parametrize("path", PATHS)
def test_no_body_causes_a_server_error(clients, model, path):
    client = clients[model, "onnx"]
    card = client.get("/v1/model").json()
    width = 1
    for size in card["input_shape"]:
        width *= size

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(body=bodies(width, card["latent_dim"]))
    def check(body):
        text = json.dumps(body, allow_nan=True)  # NaN and Infinity reach the server as JSON literals
        response = client.post(path, content=text, headers={"content-type": "application/json"})
        assert response.status_code < 500, (body, response.text)
        if response.status_code != 200:
            assert set(response.json()) == {"error", "code"}

    check()


@settings(max_examples=60, deadline=None)
@given(raw=st.binary(max_size=200), content_type=st.sampled_from(["application/json", "multipart/form-data; boundary=x", "text/plain", ""]))
def test_no_raw_bytes_cause_a_server_error(clients, raw, content_type):
    client = clients["digits", "onnx"]
    for path in PATHS:
        response = client.post(path, content=raw, headers={"content-type": content_type})
        assert response.status_code < 500, (path, raw, response.text)


# --- the Open Inference Protocol: tensors of every shape and type, and binary bodies ---------------------------
DATATYPES = st.sampled_from(["FP32", "FP64", "FP16", "INT64", "BOOL", "BYTES", "UINT8"]) | JSON_VALUES


def tensors(names: list[str]):
    return st.fixed_dictionaries(
        {"name": st.sampled_from(names) | JSON_VALUES},
        optional={
            "datatype": DATATYPES,
            "shape": st.lists(st.integers(min_value=-2, max_value=70), max_size=4) | JSON_VALUES,
            "data": st.lists(NUMBERS | JSON_VALUES, max_size=70) | JSON_VALUES,
            "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-3, 300) | JSON_VALUES})
            | JSON_VALUES,
        },
    )


def oip_requests(names: list[str]):
    return st.fixed_dictionaries(
        {},
        optional={
            "id": JSON_VALUES,
            "inputs": st.lists(tensors(names), max_size=3) | JSON_VALUES,
            "outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=12) | JSON_VALUES}), max_size=3)
            | JSON_VALUES,
            "parameters": st.fixed_dictionaries({}, optional={
                "n_samples": st.integers(-3, 20_000) | JSON_VALUES, "iw_samples": st.integers(-3, 20_000) | JSON_VALUES,
                "seed": st.integers(-(2**70), 2**70) | JSON_VALUES, "decode": JSON_VALUES,
                "binary_data_output": JSON_VALUES, "threshold": NUMBERS | JSON_VALUES,
            }) | JSON_VALUES,
        },
    ) | JSON_VALUES


@pytest.mark.parametrize("operation", ["encode", "sample", "decode", "elbo"])
def test_no_inference_request_causes_a_server_error(clients, operation):
    client = clients["digits", "onnx"]

    @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(body=oip_requests(["instances", "z"]), tail=st.binary(max_size=64),
           header_length=st.none() | st.integers(-5, 400).map(str)
           | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=4))
    def check(body, tail, header_length):
        head = json.dumps(body, allow_nan=True).encode()
        headers = {"content-type": "application/json"}
        if header_length is not None:  # the binary extension: the JSON header, then raw tensor bytes
            headers = {"content-type": "application/octet-stream", "inference-header-content-length": header_length}
        response = client.post(f"/v2/models/digits-{operation}/infer", content=head + tail, headers=headers)
        assert response.status_code < 500, (body, header_length, response.text)
        if response.status_code != 200:
            assert set(response.json()) == {"error"}, response.text

    check()


@settings(max_examples=60, deadline=None)
@given(name=st.text(max_size=20))
def test_no_model_or_picture_name_causes_a_server_error(clients, name):
    client = clients["digits", "onnx"]
    name = quote(name, safe="")  # as a client sends any name: percent-encoded
    for path in (f"/v2/models/{name}", f"/v2/models/{name}/ready", f"/v1/model/report/{name}", f"/ui/{name}"):
        response = client.get(path)
        assert response.status_code < 500, (path, response.text)
