"""Property-based fuzzing of every endpoint: no input, however odd, gets a 5xx."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=20,
)
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
@given(
    raw=st.binary(max_size=200),
    content_type=st.sampled_from(["application/json", "multipart/form-data; boundary=x", "text/plain", ""]),
)
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
    return (
        st.fixed_dictionaries(
            {},
            optional={
                "id": JSON_VALUES,
                "inputs": st.lists(tensors(names), max_size=3) | JSON_VALUES,
                "outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=12) | JSON_VALUES}), max_size=3)
                | JSON_VALUES,
                "parameters": st.fixed_dictionaries(
                    {},
                    optional={
                        "n_samples": st.integers(-3, 20_000) | JSON_VALUES,
                        "iw_samples": st.integers(-3, 20_000) | JSON_VALUES,
                        "seed": st.integers(-(2**70), 2**70) | JSON_VALUES,
                        "decode": JSON_VALUES,
                        "binary_data_output": JSON_VALUES,
                        "threshold": NUMBERS | JSON_VALUES,
                    },
                )
                | JSON_VALUES,
            },
        )
        | JSON_VALUES
    )


@pytest.mark.parametrize("operation", ["encode", "sample", "decode", "elbo"])
def test_no_inference_request_causes_a_server_error(clients, operation):
    client = clients["digits", "onnx"]

    @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        body=oip_requests(["instances", "z"]),
        tail=st.binary(max_size=64),
        header_length=st.none()
        | st.integers(-5, 400).map(str)
        | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=4),
    )
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


# --- hostile JSON text: any nesting, broken structure, extreme numbers, through every way in ------------------
EXTREME_NUMBERS = st.sampled_from(
    [
        "1e400",
        "-1e400",
        "1e39",
        "-1e39",
        "3.4028236e38",
        "1e-400",
        "-0",
        "NaN",
        "Infinity",
        "-Infinity",
        "1" * 400,
        "9" * 5000,
        "0." + "0" * 1000 + "1",
        "1.7976931348623157e308",
        "-9223372036854775809",
    ]
)


@st.composite
def nested_texts(draw) -> str:
    """A leaf wrapped in lists and objects, up to far beyond any parser's depth limit."""
    depth = draw(st.integers(min_value=1, max_value=3000))
    leaf = draw(EXTREME_NUMBERS | st.sampled_from(["0", "null", '"a"', "[]", "{}", "true"]))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"instances": ', "}"), ('[{"z": ', "}]")]))
    return opener * depth + leaf + closer * depth


@st.composite
def row_texts(draw, width: int) -> str:
    """Rows of the model's width whose numbers are literal text: extreme, or ordinary."""
    n_rows = draw(st.integers(min_value=1, max_value=3))
    numbers = EXTREME_NUMBERS | st.sampled_from(["0", "1.5", "16"])
    return (
        "["
        + ",".join("[" + ",".join(draw(st.lists(numbers, min_size=width, max_size=width))) + "]" for _ in range(n_rows))
        + "]"
    )


@st.composite
def hostile_bodies(draw, width: int, latent: int) -> str:
    """Nested, truncated, corrupted or extreme JSON text for the native API and for OIP's tensors."""
    value = draw(nested_texts() | row_texts(width) | row_texts(latent))
    field = draw(st.sampled_from(["instances", "z"]))
    text = draw(
        st.sampled_from(
            [
                f'{{"{field}": {value}}}',
                f'{{"{field}": {value}, "n_samples": {draw(EXTREME_NUMBERS)}, "decode": true}}',
                f'{{"inputs": [{{"name": "{field}", "shape": [1, {width}], "datatype": "FP32", "data": {value}}}]}}',
                value,
            ]
        )
    )
    cut = draw(st.none() | st.integers(min_value=0, max_value=len(text)))
    if cut is not None:  # a body cut short, or with garbage where it was cut
        text = text[:cut] + draw(st.sampled_from(["", "]", "}", ",", "\x00", "\ufffd", '"', "[[", "{{"]))
    return text


def native_and_oip_paths(name: str) -> list[str]:
    return PATHS + [f"/v2/models/{name}-{op}/infer" for op in ("encode", "sample", "decode", "elbo")]


@pytest.mark.parametrize("model", ["digits", "tabular"])
def test_no_hostile_json_causes_a_server_error(clients, model):
    client = clients[model, "onnx"]
    card = client.get("/v1/model").json()
    width = 1
    for size in card["input_shape"]:
        width *= size

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        text=hostile_bodies(width, card["latent_dim"]),
        content_type=st.sampled_from(
            ["application/json", "application/json; charset=utf-8", "text/plain", "application/octet-stream", None]
        ),
    )
    def check(text, content_type):
        headers = {"content-type": content_type} if content_type else {}
        for path in native_and_oip_paths(card["name"]):
            response = client.post(path, content=text.encode("utf-8", "surrogatepass"), headers=headers)
            assert response.status_code < 500, (path, text[:200], response.text)
            if response.status_code != 200:
                assert "error" in response.json(), response.text

    check()


def test_no_hostile_form_field_causes_a_server_error(clients):
    import io

    import numpy as np
    from PIL import Image

    client = clients["digits", "onnx"]
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(buffer, format="PNG")
    files = [("files", ("a.png", buffer.getvalue(), "image/png"))]

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        value=nested_texts() | EXTREME_NUMBERS | st.text(max_size=300),
        field=st.sampled_from(["n_samples", "seed", "decode", "iw_samples", "threshold", "fpr", "feature_scores"]),
    )
    def check(value, field):
        for path in ("/encode", "/sample", "/elbo", "/heatmap"):
            response = client.post(path, files=files, data={field: value})
            assert response.status_code < 500, (path, field, value[:200], response.text)

    check()
