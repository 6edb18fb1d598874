"""The Open Inference Protocol v2 over HTTP, with a client written from the spec: requests built by hand
(JSON, and JSON + binary tensors), responses parsed by hand. Its answers must equal the native API's."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app
from service.http.settings import Settings
from tests.helpers import instances_for

HEADER_LENGTH = "inference-header-content-length"
NUMPY_TYPES = {"FP64": "<f8", "FP32": "<f4"}
ELBO_OUTPUTS = ["elbo", "reconstruction", "kl", "log_likelihood", "anomaly_score", "is_anomaly", "p_value"]


# --- a client written from the spec --------------------------------------------------------------------------
def model(client: TestClient, op: str) -> str:
    return f"{client.get('/v1/model').json()['name']}-{op}"


def tensor(name: str, array, datatype: str = "FP64", flat: bool = False) -> dict:
    """A $request_input with JSON data, nested as the array or flat in row-major order."""
    array = np.asarray(array, dtype=NUMPY_TYPES[datatype])
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype,
        "data": array.reshape(-1).tolist() if flat else array.tolist(),
    }


def binary_tensor(name: str, array, datatype: str = "FP64") -> tuple[dict, bytes]:
    """A $request_input whose data travels as binary after the JSON: little-endian, row-major."""
    raw = np.ascontiguousarray(array, dtype=NUMPY_TYPES[datatype]).tobytes()
    return {
        "name": name,
        "shape": list(np.shape(array)),
        "datatype": datatype,
        "parameters": {"binary_data_size": len(raw)},
    }, raw


def binary_body(request: dict, chunks: list[bytes]) -> tuple[bytes, dict]:
    header = json.dumps(request).encode()
    headers = {HEADER_LENGTH: str(len(header)), "content-type": "application/octet-stream"}
    return header + b"".join(chunks), headers


def infer(client: TestClient, name: str, inputs: list[dict], **fields):
    return client.post(f"/v2/models/{name}/infer", json={"inputs": inputs, **fields})


def parse(response) -> tuple[dict, dict[str, np.ndarray]]:
    """The response's JSON header and its outputs as arrays, whether each came as JSON or as binary data."""
    assert response.status_code == 200, response.text
    body = response.content
    length = response.headers.get(HEADER_LENGTH)
    if length is None:
        assert response.headers["content-type"] == "application/json"
        header, binary = json.loads(body), b""
    else:
        assert response.headers["content-type"] == "application/octet-stream"
        assert int(response.headers["content-length"]) == len(body)
        header, binary = json.loads(body[: int(length)]), body[int(length) :]
    arrays, offset = {}, 0
    for out in header["outputs"]:
        size = out.get("parameters", {}).get("binary_data_size")
        if size is None:
            arrays[out["name"]] = np.asarray(out["data"]).reshape(out["shape"])  # flat or nested, row-major
            continue
        chunk = binary[offset : offset + size]
        offset += size
        if out["datatype"] == "BOOL":  # one byte per element, 1 or 0
            raw = np.frombuffer(chunk, dtype=np.uint8)
            assert set(raw.tolist()) <= {0, 1}
            arrays[out["name"]] = raw.astype(bool).reshape(out["shape"])
        else:
            arrays[out["name"]] = np.frombuffer(chunk, dtype=NUMPY_TYPES[out["datatype"]]).reshape(out["shape"])
    assert offset == len(binary)
    return header, arrays


def error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    return body["error"]


def assert_equal_to_native(arrays: dict[str, np.ndarray], native: dict) -> None:
    for name, array in arrays.items():
        np.testing.assert_array_equal(array, np.asarray(native[name]), err_msg=name)


# --- health and metadata -------------------------------------------------------------------------------------
def test_server_metadata(client):
    response = client.get("/v2")
    assert response.status_code == 200
    assert response.json() == {"name": "vae-service", "version": "0.1.0", "extensions": ["binary_tensor_data"]}


@pytest.mark.parametrize("path, body", [("/v2/health/live", {"live": True}), ("/v2/health/ready", {"ready": True})])
def test_server_health(client, path, body):
    response = client.get(path)
    assert response.status_code == 200 and response.json() == body  # KServe's client reads the body


@pytest.mark.parametrize("op", ["encode", "sample", "decode", "elbo"])
def test_model_ready(client, op):
    response = client.get(f"/v2/models/{model(client, op)}/ready")
    assert response.status_code == 200 and response.content == b""


def test_model_metadata_of_every_operation(digits_client):
    x, d = [-1, 1, 8, 8], 4

    def fp64(name, shape):
        return {"name": name, "datatype": "FP64", "shape": shape}

    expected = {
        "digits-encode": (
            [fp64("instances", x)],
            [fp64("mu", [-1, d]), fp64("logvar", [-1, d]), fp64("sigma", [-1, d])],
        ),
        "digits-sample": ([fp64("instances", x)], [fp64("z", [-1, -1, d]), fp64("x", [-1, -1, 1, 8, 8])]),
        "digits-decode": ([fp64("z", [-1, d])], [fp64("x", x)]),
        "digits-elbo": (
            [fp64("instances", x)],
            [
                fp64(name, [-1]) if name != "is_anomaly" else {"name": name, "datatype": "BOOL", "shape": [-1]}
                for name in ELBO_OUTPUTS
            ],
        ),
    }
    version = digits_client.get("/v1/model").json()["version"]
    for name, (inputs, outputs) in expected.items():
        response = digits_client.get(f"/v2/models/{name}")
        assert response.status_code == 200
        assert response.json() == {
            "name": name,
            "versions": [version],
            "platform": "onnx_onnxv1",
            "inputs": inputs,
            "outputs": outputs,
        }
        assert digits_client.get(f"/v2/models/{name}/versions/{version}").json() == response.json()


def test_versioned_paths_answer_for_the_served_version_only(digits_client):
    version = digits_client.get("/v1/model").json()["version"]
    body = {"inputs": [{"name": "z", "datatype": "FP64", "shape": [1, 4], "data": [0.0, 0.0, 0.0, 0.0]}]}
    plain = digits_client.post("/v2/models/digits-decode/infer", json=body)
    versioned = digits_client.post(f"/v2/models/digits-decode/versions/{version}/infer", json=body)
    assert versioned.status_code == 200 and versioned.json() == plain.json()
    assert plain.json()["model_version"] == version
    assert digits_client.get(f"/v2/models/digits-decode/versions/{version}/ready").status_code == 200
    for response in (
        digits_client.post("/v2/models/digits-decode/versions/0123456789ab/infer", json=body),
        digits_client.get("/v2/models/digits-decode/versions/0123456789ab"),
        digits_client.get("/v2/models/digits-decode/versions/0123456789ab/ready"),
    ):
        assert response.status_code == 404
        assert response.json() == {
            "error": f"digits-decode has no version '0123456789ab'; this server serves version {version} "
            "(also called 1)"
        }


def test_the_served_version_is_also_version_1(digits_client):
    version = digits_client.get("/v1/model").json()["version"]
    body = {"inputs": [{"name": "z", "datatype": "FP64", "shape": [1, 4], "data": [0.0, 0.0, 0.0, 0.0]}]}
    plain = digits_client.post("/v2/models/digits-decode/infer", json=body)
    first = digits_client.post("/v2/models/digits-decode/versions/1/infer", json=body)
    assert first.status_code == 200 and first.json() == plain.json()
    assert first.json()["model_version"] == version
    assert digits_client.get("/v2/models/digits-decode/versions/1/ready").status_code == 200
    assert (
        digits_client.get("/v2/models/digits-decode/versions/1").json()
        == digits_client.get("/v2/models/digits-decode").json()
    )
    assert digits_client.get("/v2/models/digits-decode/versions/2/ready").status_code == 404


def test_model_metadata_names_the_platform_and_shapes(clients):
    torchscript = clients["tabular", "torchscript"].get("/v2/models/tabular-encode").json()
    assert torchscript["platform"] == "pytorch_torchscript"
    assert torchscript["inputs"] == [{"name": "instances", "datatype": "FP64", "shape": [-1, 6]}]


@pytest.mark.parametrize("path", ["/v2/models/digits/ready", "/v2/models/digits", "/v2/models/tabular-elbo"])
def test_unknown_model_metadata_and_readiness(digits_client, path):
    assert error(digits_client.get(path), 404) == (
        f"unknown model '{path.split('/')[3]}'; "
        "this server serves digits-encode, digits-sample, digits-decode, digits-elbo"
    )


# --- inference equals the native API -------------------------------------------------------------------------
def test_encode_equals_native(client):
    instances = instances_for(client, 3)
    header, arrays = parse(infer(client, model(client, "encode"), [tensor("instances", instances)]))
    assert header == {
        "model_name": model(client, "encode"),
        "model_version": header["model_version"],
        "outputs": header["outputs"],
    }
    assert [(o["name"], o["datatype"], o["shape"]) for o in header["outputs"]] == [
        (name, "FP64", [3, len(arrays["mu"][0])]) for name in ("mu", "logvar", "sigma")
    ]
    assert_equal_to_native(arrays, client.post("/encode", json={"instances": instances}).json())


def test_flat_and_nested_data_agree(digits_client):
    digits = np.asarray(instances_for(digits_client, 2))  # (2, 1, 8, 8)
    name = model(digits_client, "encode")
    nested = parse(infer(digits_client, name, [tensor("instances", digits)]))[1]
    flat = parse(infer(digits_client, name, [tensor("instances", digits, flat=True)]))[1]
    rows = parse(infer(digits_client, name, [tensor("instances", digits.reshape(2, 64))]))[1]
    for other in (flat, rows):
        assert_equal_to_native(other, nested)


def test_fp32_data_is_the_float32_values(client):
    instances = instances_for(client, 3)
    rounded = np.asarray(instances, dtype=np.float32).astype(np.float64).tolist()
    arrays = parse(infer(client, model(client, "encode"), [tensor("instances", instances, "FP32")]))[1]
    assert_equal_to_native(arrays, client.post("/encode", json={"instances": rounded}).json())


def test_elbo_equals_native(client):
    instances = instances_for(client, 4)
    options = {"n_samples": 3, "iw_samples": 5, "seed": 11}
    response = infer(client, model(client, "elbo"), [tensor("instances", instances)], parameters=options, id="r-1")
    header, arrays = parse(response)
    native = client.post("/elbo", json={"instances": instances, **options}).json()
    assert header["id"] == "r-1" and header["model_name"] == model(client, "elbo")
    assert header["parameters"] == {"threshold": native["threshold"], "n_samples": 3, "iw_samples": 5, "seed": 11}
    assert [o["name"] for o in header["outputs"]] == ELBO_OUTPUTS
    assert [o["datatype"] for o in header["outputs"]] == ["FP64"] * 5 + ["BOOL", "FP64"]
    assert arrays["is_anomaly"].dtype == bool
    assert_equal_to_native(arrays, native)


def test_elbo_decides_at_the_requested_fpr(digits_client):
    instances = instances_for(digits_client, 2)
    options = {"seed": 0, "fpr": 0.5}
    header, arrays = parse(infer(digits_client, "digits-elbo", [tensor("instances", instances)], parameters=options))
    native = digits_client.post("/elbo", json={"instances": instances, **options}).json()
    assert header["parameters"]["threshold"] == native["threshold"]
    assert_equal_to_native(arrays, native)


def test_sample_equals_native(client):
    instances = instances_for(client, 2)
    options = {"n_samples": 3, "seed": 5, "decode": True}
    header, arrays = parse(infer(client, model(client, "sample"), [tensor("instances", instances)], parameters=options))
    native = client.post("/sample", json={"instances": instances, **options}).json()
    assert header["parameters"] == {"seed": 5}
    assert list(arrays) == ["z", "x"]
    assert_equal_to_native(arrays, native)


def test_sample_without_decode_gives_z_only(digits_client):
    instances = instances_for(digits_client, 1)
    header, arrays = parse(
        infer(digits_client, "digits-sample", [tensor("instances", instances)], parameters={"seed": 1})
    )
    assert list(arrays) == ["z"] and arrays["z"].shape == (1, 1, 4)


def test_sample_from_the_prior_without_inputs(client):
    options = {"n_samples": 4, "seed": 2, "decode": True}
    arrays = parse(infer(client, model(client, "sample"), [], parameters=options))[1]
    assert_equal_to_native(arrays, client.post("/sample", json=options).json())


def test_asking_for_x_decodes_the_samples(digits_client):
    instances = instances_for(digits_client, 2)
    response = infer(
        digits_client,
        "digits-sample",
        [tensor("instances", instances)],
        parameters={"n_samples": 2, "seed": 8},
        outputs=[{"name": "x"}],
    )
    header, arrays = parse(response)
    native = digits_client.post(
        "/sample", json={"instances": instances, "n_samples": 2, "seed": 8, "decode": True}
    ).json()
    assert list(arrays) == ["x"] and arrays["x"].shape == (2, 2, 1, 8, 8)
    assert_equal_to_native(arrays, native)


def test_decode_equals_native(client):
    d = client.get("/v1/model").json()["latent_dim"]
    z = np.random.default_rng(0).standard_normal((3, d)).tolist()
    arrays = parse(infer(client, model(client, "decode"), [tensor("z", z, flat=True)]))[1]
    assert_equal_to_native(arrays, client.post("/decode", json={"z": z}).json())


def test_requested_outputs_in_the_requested_order(digits_client):
    instances = instances_for(digits_client, 2)
    response = infer(
        digits_client,
        "digits-elbo",
        [tensor("instances", instances)],
        parameters={"seed": 0},
        outputs=[{"name": "p_value"}, {"name": "elbo"}],
    )
    header, arrays = parse(response)
    assert [o["name"] for o in header["outputs"]] == ["p_value", "elbo"]
    assert_equal_to_native(arrays, digits_client.post("/elbo", json={"instances": instances, "seed": 0}).json())


# --- the binary tensor data extension --------------------------------------------------------------------------
@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_binary_input_and_output_equal_native(client, datatype):
    instances = instances_for(client, 3)
    values = np.asarray(instances, dtype=NUMPY_TYPES[datatype])
    description, raw = binary_tensor("instances", values, datatype)
    options = {"n_samples": 2, "iw_samples": 3, "seed": 4}
    request = {
        "model_name": model(client, "elbo"),
        "inputs": [description],  # Triton's clients send model_name
        "parameters": {**options, "binary_data_output": True},
    }
    content, headers = binary_body(request, [raw])
    response = client.post(f"/v2/models/{model(client, 'elbo')}/infer", content=content, headers=headers)
    header, arrays = parse(response)
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sizes == [3 * 8] * 5 + [3] + [3 * 8] and all("data" not in o for o in header["outputs"])
    native = client.post("/elbo", json={"instances": values.astype(np.float64).tolist(), **options}).json()
    assert_equal_to_native(arrays, native)


def test_binary_data_per_output_overrides_the_request(digits_client):
    instances = instances_for(digits_client, 2)
    outputs = [
        {"name": "is_anomaly", "parameters": {"binary_data": True}},
        {"name": "kl", "parameters": {"binary_data": False}},
        {"name": "elbo"},
    ]
    response = infer(
        digits_client,
        "digits-elbo",
        [tensor("instances", instances)],
        parameters={"seed": 3, "binary_data_output": True},
        outputs=outputs,
    )
    header, arrays = parse(response)
    assert header["outputs"][0] == {
        "name": "is_anomaly",
        "datatype": "BOOL",
        "shape": [2],
        "parameters": {"binary_data_size": 2},
    }
    assert "data" in header["outputs"][1] and header["outputs"][2]["parameters"] == {"binary_data_size": 16}
    assert_equal_to_native(arrays, digits_client.post("/elbo", json={"instances": instances, "seed": 3}).json())


def test_binary_and_json_inputs_mix_and_json_outputs_by_default(digits_client):
    d = 4
    z = np.random.default_rng(1).standard_normal((2, d)).astype(np.float32)
    description, raw = binary_tensor("z", z, "FP32")
    content, headers = binary_body({"inputs": [description]}, [raw])
    response = digits_client.post("/v2/models/digits-decode/infer", content=content, headers=headers)
    assert HEADER_LENGTH not in response.headers
    arrays = parse(response)[1]
    assert_equal_to_native(arrays, digits_client.post("/decode", json={"z": z.astype(np.float64).tolist()}).json())


def test_binary_bytes_are_little_endian_row_major(digits_client):
    z = np.arange(8, dtype="<f8").reshape(2, 4) / 10
    content, headers = binary_body(
        {
            "inputs": [{"name": "z", "shape": [2, 4], "datatype": "FP64", "parameters": {"binary_data_size": 64}}],
            "parameters": {"binary_data_output": True},
        },
        [z.tobytes()],
    )
    response = digits_client.post("/v2/models/digits-decode/infer", content=content, headers=headers)
    length = int(response.headers[HEADER_LENGTH])
    header = json.loads(response.content[:length])
    assert header == {
        "model_name": "digits-decode",
        "model_version": header["model_version"],
        "outputs": [
            {"name": "x", "datatype": "FP64", "shape": [2, 1, 8, 8], "parameters": {"binary_data_size": 2 * 64 * 8}}
        ],
    }
    x = [
        [float(v) for v in np.frombuffer(response.content[length + 8 * 64 * i : length + 8 * 64 * (i + 1)], "<f8")]
        for i in range(2)
    ]
    native = digits_client.post("/decode", json={"z": z.tolist()}).json()["x"]
    assert x == np.asarray(native).reshape(2, 64).tolist()


# --- errors in the protocol's shape --------------------------------------------------------------------------
DIGIT = np.zeros((1, 64))


@pytest.mark.parametrize(
    "inputs, fields, message",
    [
        (
            [{"name": "instances", "shape": [1, 64], "datatype": "INT64", "data": [0] * 64}],
            {},
            "instances: datatype INT64 is not supported; expected FP32 or FP64",
        ),
        (
            [{"name": "instances", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 63}],
            {},
            "instances: shape [1, 64] has 64 elements but data has 63",
        ),
        (
            [{"name": "instances", "shape": [2, 32], "datatype": "FP64", "data": [[0.0] * 64]}],
            {},
            "instances: data nested as [1, 64] does not match shape [2, 32]; "
            "send it flat in row-major order or nested as the shape",
        ),
        (
            [{"name": "instances", "shape": [1, 64], "datatype": "FP64"}],
            {},
            "instances: no data; give data, or parameters.binary_data_size with the binary data after the JSON",
        ),
        (
            [{"name": "instances", "shape": [1, 64], "datatype": "FP64", "data": ["a"] + [0] * 63}],
            {},
            "instances[0]: expected a number, got str 'a'",
        ),
        (
            [{"name": "instances", "shape": [2, 63], "datatype": "FP64", "data": [0] * 126}],
            {},
            "instances: each instance must be 64 numbers or nested lists shaped [1, 8, 8]; got instances shaped [63]",
        ),
        (
            [{"name": "instances", "shape": [64], "datatype": "FP64", "data": [0] * 64}],
            {},
            "instances: expected a non-empty batch shaped (B, ...), got shape [64]",
        ),
        (
            [{"name": "instances", "shape": [1, 64], "datatype": "FP64", "data": [17] * 64}],
            {},
            "instances[0]: feature 0 is 17, outside the model's data range [0, 16] (bernoulli likelihood)",
        ),
        ([], {}, "inputs: missing input 'instances' of digits-elbo"),
        ([tensor("x", DIGIT)], {}, "inputs: digits-elbo has no input 'x'; it takes instances"),
        ([tensor("instances", DIGIT), tensor("instances", DIGIT)], {}, "inputs: 'instances' is given 2 times"),
        (
            [tensor("instances", DIGIT)],
            {"outputs": [{"name": "mu"}]},
            "outputs[0]: digits-elbo has no output 'mu'; it has " + ", ".join(ELBO_OUTPUTS),
        ),
        (
            [tensor("instances", DIGIT)],
            {"parameters": {"samples": 3}},
            "parameters: digits-elbo takes no parameter 'samples'; it takes binary_data_output, fpr, iw_samples, "
            "n_samples, seed, threshold and the standard sequence_id, sequence_start, sequence_end, priority, "
            "timeout, content_type, headers",
        ),
        (
            [tensor("instances", DIGIT)],
            {"parameters": {"n_samples": 0}},
            "n_samples: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            [tensor("instances", DIGIT)],
            {"parameters": {"seed": "7"}},
            "seed: Input should be a valid integer (got '7')",
        ),
        (
            [tensor("instances", DIGIT)],
            {"parameters": {"fpr": 0.5, "threshold": 3.0}},
            "give threshold or fpr, not both (got threshold 3 and fpr 0.5)",
        ),
        (
            [tensor("instances", DIGIT)],
            {"parameters": {"binary_data_output": 1}},
            "parameters.binary_data_output: expected true or false, got 1",
        ),
        (
            [tensor("instances", DIGIT)],
            {"outputs": [{"name": "kl", "parameters": {"binary_data": "yes"}}]},
            "outputs[0].parameters.binary_data: expected true or false, got 'yes'",
        ),
        (
            [{"name": "instances", "shape": [1, -64], "datatype": "FP64", "data": [0] * 64}],
            {},
            "inputs.0.shape.1: Input should be greater than or equal to 0 (got -64)",
        ),
        ([{"name": "instances", "shape": [1, 64], "data": [0] * 64}], {}, "inputs.0.datatype: Field required"),
    ],
)
def test_bad_requests_are_400(digits_client, inputs, fields, message):
    assert error(infer(digits_client, "digits-elbo", inputs, **fields), 400) == message


def test_missing_inputs_field(digits_client):
    assert (
        error(digits_client.post("/v2/models/digits-encode/infer", json={"id": "1"}), 400) == "inputs: Field required"
    )


def test_wrong_latent_dimension(digits_client):
    response = infer(digits_client, "digits-decode", [tensor("z", np.zeros((2, 3)))])
    assert error(response, 400) == "z: each latent vector must be 4 numbers; got vectors shaped [3]"


def test_unknown_model_is_404(digits_client):
    response = infer(digits_client, "digits-heatmap", [tensor("instances", DIGIT)])
    assert error(response, 404) == (
        "unknown model 'digits-heatmap'; this server serves digits-encode, digits-sample, digits-decode, digits-elbo"
    )


def test_malformed_json_is_400(digits_client):
    response = digits_client.post(
        "/v2/models/digits-elbo/infer", content=b"{inputs", headers={"content-type": "application/json"}
    )
    assert error(response, 400) == (
        "the inference header is not valid JSON: unexpected character, expected a string key: line 1 column 2 (char 1)"
    )


def binary_digit_request(
    size: int | None = None, extra: bytes = b"", header_length: str | None = None, data: bool = False
) -> tuple[bytes, dict]:
    description, raw = binary_tensor("instances", DIGIT)
    if size is not None:
        description["parameters"]["binary_data_size"] = size
    if data:
        description["data"] = DIGIT.tolist()
    content, headers = binary_body({"inputs": [description]}, [raw + extra])
    if header_length is not None:
        headers[HEADER_LENGTH] = header_length
    return content, headers


@pytest.mark.parametrize(
    "request_args, message",
    [
        (
            dict(header_length="abc"),
            "Inference-Header-Content-Length: expected the JSON header's length in bytes, got 'abc'",
        ),
        (
            dict(header_length="100000"),
            "Inference-Header-Content-Length: 100000 bytes of JSON header, but the body has only {body} bytes",
        ),
        (
            dict(header_length="20"),
            "the inference header is not valid JSON: unexpected end of data: line 1 column 21 (char 20)",
        ),
        (
            dict(size=1024),
            "instances: parameters.binary_data_size is 1024 bytes, "
            "but only 512 bytes of binary data remain after the JSON header",
        ),
        (
            dict(size=256, extra=b""),
            "instances: shape [1, 64] of FP64 takes 512 bytes, but parameters.binary_data_size is 256",
        ),
        (
            dict(extra=b"\x00" * 8),
            "the body has 8 bytes of binary data after the JSON header that no input claims "
            "(each binary input gives its parameters.binary_data_size)",
        ),
        (dict(size=-1), "instances: parameters.binary_data_size: expected a number of bytes, got -1"),
        (dict(data=True), "instances: give data or parameters.binary_data_size, not both"),
    ],
)
def test_malformed_binary_requests_are_400(digits_client, request_args, message):
    content, headers = binary_digit_request(**request_args)
    response = digits_client.post("/v2/models/digits-elbo/infer", content=content, headers=headers)
    assert error(response, 400) == message.format(body=len(content))


def test_binary_body_without_the_header_length_names_the_header(digits_client):
    content, headers = binary_digit_request()
    del headers[HEADER_LENGTH]
    message = error(digits_client.post("/v2/models/digits-elbo/infer", content=content, headers=headers), 400)
    assert message.startswith("the inference header is not valid JSON: ")
    assert message.endswith(
        "; a body with binary tensor data needs the header Inference-Header-Content-Length, "
        "the length in bytes of the JSON before the binary data"
    )


def test_binary_data_size_without_the_header_length(digits_client):
    description, raw = binary_tensor("instances", DIGIT)
    response = digits_client.post("/v2/models/digits-elbo/infer", json={"inputs": [description]})
    assert error(response, 400) == (
        "instances: parameters.binary_data_size needs the header Inference-Header-Content-Length, "
        "the length of the JSON before the binary data"
    )


def test_non_finite_binary_data(digits_client):
    values = np.zeros((1, 64))
    values[0, 5] = np.nan
    description, raw = binary_tensor("instances", values)
    content, headers = binary_body({"inputs": [description]}, [raw])
    response = digits_client.post("/v2/models/digits-elbo/infer", content=content, headers=headers)
    assert error(response, 400) == "instances[0][5]: expected a finite number, got nan"


def test_native_errors_keep_their_shape(digits_client):
    response = digits_client.post("/elbo", json={"instances": [[0.0] * 63]})
    assert response.status_code == 422 and set(response.json()) == {"error", "code"}


def test_infer_and_metadata_are_in_the_openapi_schema(digits_client):
    paths = digits_client.get("/openapi.json").json()["paths"]
    assert {
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{model_name}",
        "/v2/models/{model_name}/ready",
        "/v2/models/{model_name}/infer",
    } <= set(paths)


# --- apps with other settings ----------------------------------------------------------------------------------
def app_client(model_dir, **settings) -> TestClient:
    """A client of an app with these settings; entering it loads the model."""
    return TestClient(create_app(Settings(model_dir=model_dir, **settings)))


def test_api_key_guards_metadata_inference_and_model_readiness_not_health(digits_model_dir):
    body = {"inputs": [tensor("instances", DIGIT)]}
    good = {"authorization": "Bearer s3cret"}
    with app_client(digits_model_dir, api_key="s3cret") as client:
        for response in (
            client.get("/v2"),
            client.get("/v2/models/digits-elbo"),
            client.post("/v2/models/digits-elbo/infer", json=body),
        ):
            assert (
                error(response, 401) == "this service needs an API key: send the header `Authorization: Bearer <key>`"
            )
            assert response.headers["www-authenticate"] == "Bearer"
        assert client.post("/v2/models/digits-elbo/infer", json=body, headers=good).status_code == 200
        assert client.get("/v2/models/digits-elbo", headers=good).status_code == 200
        for path in ("/v2/health/live", "/v2/health/ready"):
            assert client.get(path).status_code == 200, path
        # A model's readiness says which model names exist: behind the key, like its metadata.
        for path in ("/v2/models/digits-elbo/ready", "/v2/models/digits-elbo/versions/1/ready"):
            assert (
                error(client.get(path), 401)
                == "this service needs an API key: send the header `Authorization: Bearer <key>`"
            )
        assert client.get("/v2/models/digits-elbo/ready", headers=good).status_code == 200


def test_limits_answer_413(digits_model_dir):
    with app_client(digits_model_dir, max_instances=2) as client:
        response = infer(client, "digits-encode", [tensor("instances", np.zeros((3, 64)))])
    assert error(response, 413) == "instances: 3 instances exceed the limit of 2 per request (VAE_MAX_INSTANCES)"


def test_not_ready_is_503(digits_model_dir):
    client = app_client(digits_model_dir)  # not entered: the model never loads
    message = "the model is still loading; retry when GET /readyz returns 200"
    assert error(client.get("/v2/health/ready"), 503) == message
    assert error(client.get("/v2/models/digits-elbo/ready"), 503) == message
    assert error(infer(client, "digits-elbo", [tensor("instances", DIGIT)]), 503) == message
    assert client.get("/v2/health/live").status_code == 200


# --- the body's Content-Type ---------------------------------------------------------------------------------
INFER_TAKES = "/v2/models/digits-elbo/infer takes application/json or application/octet-stream"


@pytest.mark.parametrize(
    "content_type, given",
    [
        ("text/plain", "'text/plain'"),  # what a web page may POST cross-site without a CORS preflight
        ("application/x-www-form-urlencoded", "'application/x-www-form-urlencoded'"),
        ("application/x-npy", "'application/x-npy'"),  # the native routes' binary body, not a v2 one
    ],
)
def test_a_declared_content_type_other_than_json_or_binary_is_415(digits_client, content_type, given):
    body = json.dumps({"inputs": [tensor("instances", DIGIT)]}).encode()
    response = digits_client.post("/v2/models/digits-elbo/infer", content=body, headers={"content-type": content_type})
    assert error(response, 415) == f"Content-Type: {given}; {INFER_TAKES}"


def test_json_with_a_charset_and_json_without_a_content_type_are_taken(digits_client):
    request = {"inputs": [tensor("instances", DIGIT)], "parameters": {"seed": 0}}
    declared = digits_client.post("/v2/models/digits-elbo/infer", json=request)
    body = json.dumps(request).encode()
    charset = digits_client.post(
        "/v2/models/digits-elbo/infer", content=body, headers={"content-type": "application/json; charset=utf-8"}
    )
    undeclared = digits_client.post("/v2/models/digits-elbo/infer", content=body)
    assert "content-type" not in undeclared.request.headers
    assert declared.status_code == charset.status_code == undeclared.status_code == 200
    assert charset.json() == undeclared.json() == declared.json()


def test_a_binary_body_without_a_content_type_is_taken(digits_client):
    description, raw = binary_tensor("instances", DIGIT)
    content, headers = binary_body({"inputs": [description], "parameters": {"seed": 0}}, [raw])
    declared = digits_client.post("/v2/models/digits-elbo/infer", content=content, headers=headers)
    del headers["content-type"]
    undeclared = digits_client.post("/v2/models/digits-elbo/infer", content=content, headers=headers)
    assert parse(undeclared)[0] == parse(declared)[0]  # the same outputs, data included, and the same seed


def test_tritonclient_sends_no_content_type():
    """Why a body without a Content-Type is taken: Triton's HTTP client (2.73.0) sends none, on JSON and on binary
    bodies. A server that records the headers of its infer requests shows it."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    seen: list[dict[str, str]] = []

    class Recorder(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            seen.append({k.lower(): v for k, v in self.headers.items()})
            answer = b'{"error": "recorded"}'
            self.send_response(400)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.server_port}")
    try:
        for binary in (False, True):
            tensor_in = httpclient.InferInput("instances", [1, 64], "FP64")
            tensor_in.set_data_from_numpy(DIGIT, binary_data=binary)
            with pytest.raises(InferenceServerException, match="recorded"):
                client.infer("digits-elbo", [tensor_in])
    finally:
        client.close()
        server.shutdown()
        server.server_close()
    assert len(seen) == 2
    assert [("content-type" in headers, "inference-header-content-length" in headers) for headers in seen] == [
        (False, False),
        (False, True),
    ]


# --- standard parameters, content_type, compressed bodies ------------------------------------------------------
@pytest.mark.parametrize(
    "parameters",
    [
        {"sequence_id": 7, "sequence_start": True, "sequence_end": False},
        {"sequence_id": "session-a"},
        {"priority": 2},
        {"timeout": 0},
        {"timeout": 60_000_000},
        {"content_type": "np"},
        {"headers": {"x-request": "1"}},
    ],
)
def test_standard_parameters_are_taken_and_change_nothing(digits_client, parameters):
    inputs = [tensor("instances", DIGIT)]
    plain = infer(digits_client, "digits-elbo", inputs, parameters={"seed": 0})
    given = infer(digits_client, "digits-elbo", inputs, parameters={"seed": 0, **parameters})
    assert given.status_code == 200 and given.json() == plain.json()


@pytest.mark.parametrize(
    "parameters, message",
    [
        ({"priority": -1}, "parameters.priority: expected a whole number, 0 or more, got -1"),
        ({"timeout": 1.5}, "parameters.timeout: expected a whole number of microseconds, 0 or more, got 1.5"),
        ({"sequence_id": 1.5}, "parameters.sequence_id: expected an integer or a string, got 1.5"),
        ({"sequence_end": 1}, "parameters.sequence_end: expected true or false, got 1"),
        (
            {"content_type": "pd"},
            "parameters.content_type: expected 'np' (the tensors are read as numpy arrays), got 'pd'",
        ),
    ],
)
def test_bad_standard_parameters_are_400(digits_client, parameters, message):
    response = infer(digits_client, "digits-elbo", [tensor("instances", DIGIT)], parameters=parameters)
    assert error(response, 400) == message


def test_a_timeout_the_request_cannot_meet_is_503(digits_client):
    response = infer(digits_client, "digits-elbo", [tensor("instances", DIGIT)], parameters={"timeout": 1})
    assert error(response, 503) == "the request did not finish within its parameters.timeout of 1 us"


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_bodies_are_decompressed(digits_client, encoding):
    import gzip
    import zlib

    request = {"inputs": [tensor("instances", DIGIT)], "parameters": {"seed": 0}}
    plain = digits_client.post("/v2/models/digits-elbo/infer", json=request)
    content, headers = binary_digit_request()
    raw = json.dumps(request).encode()
    packed = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    response = digits_client.post(
        "/v2/models/digits-elbo/infer",
        content=packed,
        headers={"content-type": "application/json", "content-encoding": encoding},
    )
    assert response.status_code == 200 and response.json() == plain.json()
    packed_binary = gzip.compress(content) if encoding == "gzip" else zlib.compress(content)
    binary = digits_client.post(
        "/v2/models/digits-elbo/infer", content=packed_binary, headers={**headers, "content-encoding": encoding}
    )
    assert binary.status_code == 200


def test_a_body_that_decompresses_beyond_the_body_limit_is_413(digits_model_dir):
    import gzip

    bomb = gzip.compress(b" " * (8 * 1024 * 1024))  # 8 MiB of spaces: about 8 KiB compressed
    with app_client(digits_model_dir, max_body_bytes=1024 * 1024) as client:
        response = client.post(
            "/v2/models/digits-elbo/infer",
            content=bomb,
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
    assert error(response, 413) == (
        "the body decompresses to more than 1048576 bytes (VAE_MAX_BODY_BYTES); send it in smaller requests"
    )


@pytest.mark.parametrize(
    "encoding, content, status, message",
    [
        ("br", b"{}", 415, "Content-Encoding: 'br'; expected gzip, deflate or identity"),
        (
            "gzip",
            b"not gzip",
            400,
            "the body is not valid gzip data (Error -3 while decompressing data: incorrect header check)",
        ),
    ],
)
def test_bad_content_encodings(digits_client, encoding, content, status, message):
    response = digits_client.post(
        "/v2/models/digits-elbo/infer",
        content=content,
        headers={"content-type": "application/json", "content-encoding": encoding},
    )
    assert error(response, status) == message


def test_a_cut_short_gzip_body_is_400(digits_client):
    import gzip

    packed = gzip.compress(json.dumps({"inputs": [tensor("instances", DIGIT)]}).encode())
    response = digits_client.post(
        "/v2/models/digits-elbo/infer",
        content=packed[:-12],
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert error(response, 400) == "the body is cut short: its gzip data does not end"


# --- metrics -------------------------------------------------------------------------------------------------
def requests_by_operation(client: TestClient) -> dict[tuple[str, str, str], float]:
    """vae_requests_total of the /v2 routes by (endpoint, status, operation)."""
    from prometheus_client.parser import text_string_to_metric_families

    counts = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "vae_requests_total" and labels["endpoint"].startswith("/v2"):
                counts[labels["endpoint"], labels["status"], labels["operation"]] = sample.value
    return counts


def test_v2_requests_are_counted_per_operation(digits_model_dir):
    infer_path, ready, metadata = (
        "/v2/models/{model_name}/infer",
        "/v2/models/{model_name}/ready",
        "/v2/models/{model_name}",
    )
    with app_client(digits_model_dir) as client:
        for _ in range(2):
            assert infer(client, "digits-elbo", [tensor("instances", DIGIT)]).status_code == 200
        assert infer(client, "digits-encode", [tensor("instances", DIGIT)]).status_code == 200
        assert infer(client, "digits-decode", [tensor("z", np.zeros((1, 4)))]).status_code == 200
        assert infer(client, "digits-elbo", [tensor("x", DIGIT)]).status_code == 400
        assert client.get("/v2/models/digits-sample").status_code == 200
        assert client.get("/v2/models/digits-encode/ready").status_code == 200
        assert infer(client, "made-up", []).status_code == 404  # no operation: the label stays bounded
        assert client.get("/v2").status_code == 200
        assert requests_by_operation(client) == {
            (infer_path, "200", "elbo"): 2,
            (infer_path, "200", "encode"): 1,
            (infer_path, "200", "decode"): 1,
            (infer_path, "400", "elbo"): 1,
            (infer_path, "404", ""): 1,
            (metadata, "200", "sample"): 1,
            (ready, "200", "encode"): 1,
            ("/v2", "200", ""): 1,  # the server's metadata is no operation's
        }
