"""The Open Inference Protocol v2 over gRPC (VAE_GRPC_PORT) as real clients from PyPI speak it, against a real
`vae serve` process: tritonclient.grpc (sync and aio) and KServe's InferenceGRPCClient. Each answer must equal
the native API's, to the bit, and each error must carry its gRPC code and REST's message (docs/oip-v2.md).

tritonclient.grpc runs in a process of its own (tests/service/triton_grpc_calls.py says why)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as kserve_pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

from tests.helpers import VAE, free_port, start_server, stop

TRITON_CALLS = Path(__file__).with_name("triton_grpc_calls.py")
ELBO_OUTPUTS = ["elbo", "reconstruction", "kl", "log_likelihood", "anomaly_score", "is_anomaly", "p_value"]
KEY = "s3cret"


def grpc_server(model_dir, **env):
    """`vae serve` with the gRPC service on a free port: (process, REST base URL, gRPC address)."""
    port = free_port()
    process, base = start_server(model_dir, env={"VAE_GRPC_PORT": str(port), **env})
    return process, base, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server(digits_model_dir):
    process, base, address = grpc_server(digits_model_dir)
    yield base, address, process
    stop(process)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    return load_digits().data[:3].reshape(3, 1, 8, 8)  # raw units, as the native API takes them


def native(base: str, path: str, body: dict, key: str | None = None) -> dict:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(f"{base}{path}", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def triton(address: str, mode: str, key: str | None = None) -> dict:
    command = [sys.executable, str(TRITON_CALLS), address, mode, *([key] if key else [])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


# --- tritonclient.grpc, sync and aio -----------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["sync", "aio"])
def triton_answers(request, server):
    base, address, _ = server
    return base, triton(address, request.param)


def test_triton_health_and_metadata(triton_answers):
    base, got = triton_answers
    version = httpx.get(f"{base}/v1/model").json()["version"]
    assert got["live"] is True and got["ready"] is True
    assert got["model_ready"] == [True, True, False, False]  # "", "1", "2", an unknown model
    assert got["server_metadata"] == {"name": "vae-service", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
    metadata = got["model_metadata"]
    assert metadata["name"] == "digits-elbo" and metadata["versions"] == [version]
    assert metadata["platform"] == "onnx_onnxv1"
    assert metadata["inputs"] == [{"name": "instances", "datatype": "FP64", "shape": ["-1", "1", "8", "8"]}]
    assert [(o["name"], o["datatype"]) for o in metadata["outputs"]] == [
        (name, "BOOL" if name == "is_anomaly" else "FP64") for name in ELBO_OUTPUTS
    ]


def test_triton_answers_equal_native(triton_answers, digits):
    base, got = triton_answers
    assert got["elbo"] == {
        name: value
        for name, value in native(base, "/elbo", {"instances": digits.tolist(), "seed": 3, "n_samples": 4}).items()
        if name in ELBO_OUTPUTS
    }
    parameters = got["elbo_response"]["parameters"]
    assert parameters["seed"] == {"int64_param": "3"} and parameters["n_samples"] == {"int64_param": "4"}
    # A float parameter (fpr) arrives as Triton's double_param; FP32 inputs mean their float32 values.
    as_fp32 = digits.astype(np.float32).astype(np.float64).tolist()
    expected = native(base, "/elbo", {"instances": as_fp32, "seed": 3, "fpr": 0.25})
    assert got["elbo_fp32_fpr"] == {name: expected[name] for name in ("anomaly_score", "is_anomaly")}
    encoded = native(base, "/encode", {"instances": digits.tolist()})
    assert got["encode"] == {name: encoded[name] for name in ("mu", "logvar", "sigma")}
    assert got["encode_id"] == "42"
    z = np.linspace(-1, 1, 8).reshape(2, 4)
    assert got["decode"] == {"x": native(base, "/decode", {"z": z.tolist()})["x"]}
    sampled = native(base, "/sample", {"n_samples": 3, "seed": 7, "decode": True})
    assert got["sample"] == {"z": sampled["z"], "x": sampled["x"]}


def test_triton_errors_carry_grpc_codes(triton_answers):
    _, got = triton_answers
    errors = got["errors"]
    assert errors["unknown_model"] == {
        "status": "StatusCode.NOT_FOUND",
        "message": "unknown model 'digits-heatmap'; this server serves digits-encode, digits-sample, digits-decode, "
        "digits-elbo",
    }
    assert errors["bad_shape"] == {
        "status": "StatusCode.INVALID_ARGUMENT",
        "message": "instances: each instance must be 64 numbers or nested lists shaped [1, 8, 8]; "
        "got instances shaped [5]",
    }
    assert errors["bad_parameter"] == {
        "status": "StatusCode.INVALID_ARGUMENT",
        "message": "fpr: Input should be less than 1 (got 2.0)",
    }
    assert errors["unknown_parameter"] == {
        "status": "StatusCode.INVALID_ARGUMENT",
        "message": "parameters: digits-elbo takes no parameter 'n_sample'; it takes binary_data_output, fpr, "
        "iw_samples, n_samples, seed, threshold and the standard sequence_id, sequence_start, sequence_end, "
        "priority, timeout, content_type, headers",
    }
    assert errors["unknown_version"]["status"] == "StatusCode.NOT_FOUND"
    assert errors["unknown_version"]["message"].startswith("digits-encode has no version '2'; this server serves")


def test_the_grpc_server_runs_on_uvicorns_uvloop(server):
    """vae serve runs uvicorn with uvloop (uvicorn[standard]); grpc.aio shares that loop."""
    *_, process = server
    log = Path(process.log_path).read_text()
    assert "serving the OIP v2 gRPC service on 127.0.0.1:" in log
    assert "on the uvloop event loop" in log


# --- KServe's InferenceGRPCClient --------------------------------------------------------------------------------
def kserve_call(address: str, call, key: str | None = None):
    """call(client, headers) with a fresh client, in an event loop of its own."""

    async def run():
        headers = [("authorization", f"Bearer {key}")] if key else None
        async with InferenceGRPCClient(address, retries=0, timeout=30) as client:
            return await call(client, headers)

    return asyncio.run(run())


@pytest.mark.parametrize("raw", [True, False])
def test_kserve_elbo_and_encode_equal_native(server, digits, raw):
    """numpy data goes as raw_input_contents (and comes back raw); a list as typed fp64_contents (and typed)."""
    base, address, _ = server

    def instances():
        given = InferInput("instances", list(digits.shape), "FP64")
        if raw:
            given.set_data_from_numpy(digits.astype(np.float64))
        else:
            given.set_data_from_numpy(digits.astype(np.float64), binary_data=False)
        return [given]

    async def call(client, headers):
        elbo = await client.infer(InferRequest("digits-elbo", instances(), parameters={"seed": 5, "n_samples": 2}))
        encode = await client.infer(InferRequest("digits-encode", instances(), request_id="7"))
        return elbo, encode

    elbo, encode = kserve_call(address, call)
    expected = native(base, "/elbo", {"instances": digits.tolist(), "seed": 5, "n_samples": 2})
    assert [o.name for o in elbo.outputs] == ELBO_OUTPUTS
    for output in elbo.outputs:
        np.testing.assert_array_equal(output.as_numpy(), np.asarray(expected[output.name]), err_msg=output.name)
    assert elbo.outputs[ELBO_OUTPUTS.index("is_anomaly")].as_numpy().dtype == np.bool_
    encoded = native(base, "/encode", {"instances": digits.tolist()})
    for output in encode.outputs:
        np.testing.assert_array_equal(output.as_numpy(), np.asarray(encoded[output.name]), err_msg=output.name)
    assert encode.id == "7"


def test_kserve_health(server):
    _, address, _ = server

    async def call(client, headers):
        return (
            await client.is_server_live(),
            await client.is_server_ready(),
            await client.is_model_ready("digits-decode"),
            await client.is_model_ready("digits-heatmap"),
        )

    assert kserve_call(address, call) == (True, True, True, False)


def test_kserve_unknown_model_is_not_found(server, digits):
    _, address, _ = server
    given = InferInput("instances", list(digits.shape), "FP64")
    given.set_data_from_numpy(digits.astype(np.float64))

    async def call(client, headers):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.infer(InferRequest("digits-heatmap", [given]))
        return caught.value

    error = kserve_call(address, call)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details().startswith("unknown model 'digits-heatmap'")


# --- hand-made messages: what only gRPC can get wrong ------------------------------------------------------------
def rpc_error(address: str, request: kserve_pb.ModelInferRequest, metadata=None) -> grpc.RpcError:
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=metadata, timeout=30)
    return caught.value


def infer_request(inputs, raw=(), model="digits-encode") -> kserve_pb.ModelInferRequest:
    return kserve_pb.ModelInferRequest(model_name=model, inputs=inputs, raw_input_contents=list(raw))


def tensor(
    name="instances", shape=(1, 64), datatype="FP64", **contents
) -> kserve_pb.ModelInferRequest.InferInputTensor:
    return kserve_pb.ModelInferRequest.InferInputTensor(
        name=name,
        shape=list(shape),
        datatype=datatype,
        contents=kserve_pb.InferTensorContents(**contents) if contents else None,
    )


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            infer_request([tensor()], raw=[b"\0" * 512, b"\0" * 8]),
            "raw_input_contents has 2 entries but the request has 1 inputs: give one entry per input, in the order "
            "of inputs",
        ),
        (
            infer_request([tensor(fp64_contents=[0.0] * 64)], raw=[b"\0" * 512]),
            "instances: give raw_input_contents or contents, not both",
        ),
        (
            infer_request([tensor(fp64_contents=[0.0] * 63)]),
            "instances: shape [1, 64] has 64 elements but contents.fp64_contents has 63 (a FP64 tensor's typed data "
            "goes in contents.fp64_contents)",
        ),
        (
            infer_request([tensor(fp32_contents=[0.0] * 64)]),
            "instances: shape [1, 64] has 64 elements but contents.fp64_contents has 0 (a FP64 tensor's typed data "
            "goes in contents.fp64_contents)",
        ),
        (
            infer_request([tensor(datatype="INT64", int64_contents=[0] * 64)]),
            "instances: datatype INT64 is not supported; expected FP32 or FP64",
        ),
        (
            infer_request([tensor()], raw=[b"\0" * 500]),
            "instances: shape [1, 64] of FP64 takes 512 bytes, but parameters.binary_data_size is 500",
        ),
        (infer_request([]), "inputs: missing input 'instances' of digits-encode"),
        (
            infer_request([tensor(fp64_contents=[float("nan")] + [0.0] * 63)]),
            "instances[0][0]: expected a finite number, got nan",
        ),
    ],
    ids=["raw_count", "raw_and_typed", "typed_count", "typed_field", "datatype", "raw_size", "missing", "nan"],
)
def test_bad_requests_are_invalid_argument(server, request_, message):
    error = rpc_error(server[1], request_)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def raw_call(address: str, method: str, body: bytes) -> grpc.RpcError:
    """`body` sent as it is to /inference.GRPCInferenceService/<method>."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}", lambda b: b, lambda b: b)
        with pytest.raises(grpc.RpcError) as caught:
            call(body, timeout=30)
    return caught.value


def test_bytes_that_are_no_message_are_invalid_argument(server):
    error = raw_call(server[1], "ModelInfer", b"\xff\xff\xff")
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "the request is not a valid inference.ModelInferRequest message (Error parsing message with type "
        "'inference.ModelInferRequest')",
    )


def test_the_repository_rpcs_are_unimplemented(server):
    error = raw_call(
        server[1], "RepositoryModelLoad", kserve_pb.RepositoryModelLoadRequest(model_name="x").SerializeToString()
    )
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_negative_dimension_is_invalid_argument(server):
    error = rpc_error(server[1], infer_request([tensor(shape=(-1, 64))], raw=[b""]))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs.0.shape.0: Input should be greater than or equal to 0 (got -1)",
    )


def test_a_string_where_a_number_belongs_is_invalid_argument(server):
    request = infer_request([tensor()], raw=[b"\0" * 512], model="digits-elbo")
    request.parameters["fpr"].string_param = "x"
    error = rpc_error(server[1], request)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "fpr: Input should be a valid number, unable to parse string as a number (got 'x')",
    )


def test_a_request_past_its_timeout_is_deadline_exceeded(server):
    """REST's 503 `timeout` is DEADLINE_EXCEEDED; the `timeout` parameter (microseconds) shortens the deadline."""
    request = infer_request([tensor()], raw=[b"\0" * 512], model="digits-elbo")
    request.parameters["timeout"].int64_param = 1
    request.parameters["n_samples"].int64_param = 2000
    error = rpc_error(server[1], request)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "the request did not finish within its parameters.timeout of 1 us",
    )


def batched_instances(base: str, endpoint: str) -> float:
    """Instances the micro-batcher of `endpoint` has run so far (its vae_batch_instances histogram's sum)."""
    metrics = httpx.get(f"{base}/metrics").text
    prefix = f'vae_batch_instances_sum{{endpoint="{endpoint}"'
    line = next(line for line in metrics.splitlines() if line.startswith(prefix))
    return float(line.rpartition(" ")[2])


def test_grpc_calls_go_through_the_http_batchers(server, digits):
    base, address, _ = server
    before = batched_instances(base, "/encode")
    with grpc.insecure_channel(address) as channel:
        request = infer_request([tensor(shape=(3, 64))], raw=[digits.astype("<f8").tobytes()])
        GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert batched_instances(base, "/encode") == before + 3


def grpc_counts(base: str) -> dict[tuple[str, str, str, str], float]:
    """vae_requests of the gRPC calls: (RPC, REST status, version, operation) -> count."""
    from prometheus_client.parser import text_string_to_metric_families

    counts = {}
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "vae_requests_total" and labels["endpoint"].startswith(
                "/inference.GRPCInferenceService/"
            ):
                key = (labels["endpoint"].rpartition("/")[2], labels["status"], labels["version"], labels["operation"])
                counts[key] = sample.value
    return counts


def test_grpc_calls_are_counted_in_the_request_metrics(server, digits):
    base, address, _ = server
    version = httpx.get(f"{base}/v1/model").json()["version"]
    before = grpc_counts(base)
    with grpc.insecure_channel(address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        stub.ModelInfer(infer_request([tensor(shape=(3, 64))], raw=[digits.astype("<f8").tobytes()]), timeout=30)
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(infer_request([tensor(shape=(3, 64))], raw=[b""], model="digits-elbo"), timeout=30)
        with pytest.raises(grpc.RpcError):  # an unknown model counts under no operation, as on /v2
            stub.ModelMetadata(kserve_pb.ModelMetadataRequest(name="digits-heatmap"), timeout=30)
        stub.ModelReady(kserve_pb.ModelReadyRequest(name="digits-decode"), timeout=30)
        stub.ServerLive(kserve_pb.ServerLiveRequest())
    after = grpc_counts(base)
    grown = {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}
    assert grown == {
        ("ModelInfer", "200", version, "encode"): 1,
        ("ModelInfer", "400", "", "elbo"): 1,
        ("ModelMetadata", "404", "", ""): 1,
        ("ModelReady", "200", "", "decode"): 1,
        ("ServerLive", "200", "", ""): 1,
    }


# --- limits, the API key, reload -------------------------------------------------------------------------------------
def test_limits_are_resource_exhausted(digits_model_dir):
    process, _, address = grpc_server(digits_model_dir, VAE_MAX_BODY_BYTES="4096", VAE_MAX_INSTANCES="2")
    try:
        too_many = rpc_error(address, infer_request([tensor(shape=(3, 64))], raw=[b"\0" * 3 * 512]))
        assert (too_many.code(), too_many.details()) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "instances: 3 instances exceed the limit of 2 per request (VAE_MAX_INSTANCES)",
        )
        too_big = infer_request([tensor(shape=(9, 64))], raw=[b"\0" * 9 * 512])
        refused = rpc_error(address, too_big)  # by gRPC itself, before the message is read whole
        assert (refused.code(), refused.details()) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"SERVER: Received message larger than max ({too_big.ByteSize()} vs. 4096)",
        )
    finally:
        stop(process)


def test_the_api_key_guards_all_but_health(digits_model_dir, digits):
    process, base, address = grpc_server(digits_model_dir, VAE_API_KEY=KEY)
    try:
        request = infer_request([tensor(shape=(1, 64))], raw=[digits[:1].astype("<f8").tobytes()])
        for metadata in (None, [("authorization", "Bearer wrong")], [("authorization", KEY)]):
            error = rpc_error(address, request, metadata)
            assert (error.code(), error.details()) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "this service needs an API key: send the metadata `Authorization: Bearer <key>`",
            )
        with grpc.insecure_channel(address) as channel:
            stub = GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(kserve_pb.ServerLiveRequest()).live  # probes need no key
            assert stub.ServerReady(kserve_pb.ServerReadyRequest()).ready
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelReady(kserve_pb.ModelReadyRequest(name="digits-elbo"))
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as caught:
                stub.ServerMetadata(kserve_pb.ServerMetadataRequest())
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        got = triton(address, "sync", KEY)  # the key as tritonclient sends headers: gRPC metadata
        assert got["encode"] == {
            name: value
            for name, value in native(base, "/encode", {"instances": digits.tolist()}, KEY).items()
            if name in ("mu", "logvar", "sigma")
        }
        assert got["errors"]["unknown_model"]["status"] == "StatusCode.NOT_FOUND"
    finally:
        stop(process)


def test_grpc_sees_a_reload(digits_model_dir, tmp_path, digits):
    """POST /v1/model/reload swaps the model gRPC answers with too: metadata and answers name the new version."""
    model = shutil.copytree(digits_model_dir, tmp_path / "digits")
    process, base, address = grpc_server(model)
    try:
        before = httpx.get(f"{base}/v1/model").json()["version"]
        manifest = model / "manifest.json"
        manifest.write_text(json.dumps(json.loads(manifest.read_text()), indent=1))  # same model, new bytes
        reloaded = httpx.post(f"{base}/v1/model/reload", json={})
        assert reloaded.status_code == 200, reloaded.text
        after = reloaded.json()["version"]
        assert after != before
        with grpc.insecure_channel(address) as channel:
            stub = GRPCInferenceServiceStub(channel)
            metadata = stub.ModelMetadata(kserve_pb.ModelMetadataRequest(name="digits-encode"))
            assert list(metadata.versions) == [after]
            request = infer_request([tensor(shape=(3, 64))], raw=[digits.astype("<f8").tobytes()])
            answer = stub.ModelInfer(request)
            assert answer.model_version == after
            assert not stub.ModelReady(kserve_pb.ModelReadyRequest(name="digits-encode", version=before)).ready
    finally:
        stop(process)


# --- the setting -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "port"), [("8001", 8001), ("0", 0), ("", None)])
def test_the_setting_reads_a_port_and_empty_is_off(monkeypatch, digits_model_dir, value, port):
    from service.http.settings import Settings

    monkeypatch.setenv("VAE_GRPC_PORT", value)
    assert Settings(model_dir=digits_model_dir).grpc_port == port


def test_a_bad_port_stops_start_up(digits_model_dir):
    env = {**os.environ, "VAE_GRPC_PORT": "70000"}
    result = subprocess.run([VAE, "serve", str(digits_model_dir)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        "invalid setting VAE_GRPC_PORT: Input should be less than or equal to 65535 (got '70000')"
    )


def test_without_the_setting_grpc_is_never_imported(digits_model_dir):
    code = (
        "import sys; from fastapi.testclient import TestClient; from service.http.main import app\n"
        "with TestClient(app) as client: assert client.get('/readyz').status_code == 200\n"
        "print(sorted(m for m in sys.modules if m == 'grpc' or m.startswith(('grpc.', 'service.http.grpc'))))"
    )
    env = {k: v for k, v in os.environ.items() if k != "VAE_GRPC_PORT"} | {"VAE_MODEL_DIR": str(digits_model_dir)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


def test_sigterm_turns_server_ready_false_and_the_server_stops(digits_model_dir):
    process, _, address = grpc_server(digits_model_dir, VAE_DRAIN_DELAY_S="4")
    try:
        with grpc.insecure_channel(address) as channel:
            stub = GRPCInferenceServiceStub(channel)
            assert stub.ServerReady(kserve_pb.ServerReadyRequest(), timeout=10).ready
            process.send_signal(signal.SIGTERM)
            time.sleep(1)  # within the drain delay: still serving, no longer ready
            assert not stub.ServerReady(kserve_pb.ServerReadyRequest(), timeout=10).ready
            assert stub.ServerLive(kserve_pb.ServerLiveRequest(), timeout=10).live
        # uvicorn re-raises the signal once it has drained, so the exit status says "ended by SIGTERM"
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        assert "Application shutdown complete." in Path(process.log_path).read_text()
    finally:
        stop(process)


def test_a_call_in_flight_at_sigterm_is_answered(digits_model_dir):
    """uvicorn drains HTTP, then the lifespan stops gRPC with VAE_REQUEST_TIMEOUT_S of grace for its calls."""
    from sklearn.datasets import load_digits

    process, _, address = grpc_server(digits_model_dir)
    try:
        x = load_digits().data[:48].astype("<f8")  # 48 x (10000 + 10000) draws: over a second on this machine
        request = infer_request([tensor(shape=(48, 64))], raw=[x.tobytes()], model="digits-elbo")
        for name, value in (("n_samples", 10_000), ("iw_samples", 10_000), ("seed", 1)):
            request.parameters[name].int64_param = value
        with grpc.insecure_channel(address) as channel:
            call = GRPCInferenceServiceStub(channel).ModelInfer.future(request, timeout=120)
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            answer = call.result()
            assert call.code() == grpc.StatusCode.OK
        assert [o.name for o in answer.outputs] == ELBO_OUTPUTS
        assert np.frombuffer(answer.raw_output_contents[0], "<f8").shape == (48,)
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        stop(process)


def test_a_port_taken_stops_start_up_naming_it(digits_model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "VAE_GRPC_PORT": str(port)}
        command = [VAE, "serve", str(digits_model_dir), "--port", str(free_port())]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3  # uvicorn's "Application startup failed"
    assert f"VAE_GRPC_PORT: cannot bind 127.0.0.1:{port}: Failed to bind to address 127.0.0.1:{port}" in result.stderr
