"""Issue 13's hard edges, each with the exact status and message: answers bounded before any work (413),
the decoder in bounded chunks that stop at the request's deadline, 415 for other content types, any nesting a
4xx, values beyond float32 a 422, and bodies, .npy arrays and images measured before they are decoded."""

from __future__ import annotations

import asyncio
import io
import json
import math
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from PIL import Image, ImageFile
from vae_client.client import VaeClient, VaeHTTPError, answer_bytes

from service.core import inputs, scoring
from service.core.artifact import load_artifact
from service.core.engine import Deadline, VaeEngine
from service.core.errors import InvalidInput, LimitExceeded, Timeout
from service.core.images import decode_upload
from service.core.runtime import OnnxRuntime
from service.http.api import body as body_module
from service.http.json_writer import json_bytes, write_json
from service.http.settings import Settings

DIGIT = [0.0] * 64
JSON_HEADERS = {"content-type": "application/json"}


def error(response, status):
    assert response.status_code == status, response.text
    return response.json()["error"]


class CountingRuntime(OnnxRuntime):
    """An ONNX runtime that records the draws of every decoder (scorer or ELBO graph) call, and can stall each one."""

    def __init__(self, artifact, stall_s: float = 0.0) -> None:
        super().__init__(artifact)
        self.decoded: list[int] = []
        self.stall_s = stall_s

    def _count(self, draws: int) -> None:
        self.decoded.append(draws)
        if self.stall_s:
            time.sleep(self.stall_s)

    def decode(self, z):
        self._count(len(z))
        return super().decode(z)

    def score(self, x, z):  # /elbo decodes inside the scorer graph when a row's draws exceed one call
        self._count(z.shape[0] * z.shape[1])
        return super().score(x, z)

    def elbo_terms(self, x, eps):  # and inside the ELBO graph otherwise
        self._count(eps.shape[0] * eps.shape[1])
        return super().elbo_terms(x, eps)


@pytest.fixture
def counting(digits_model_dir):
    return CountingRuntime(load_artifact(digits_model_dir))


# --- 1. answers bounded before any work ----------------------------------------------------------------------
def test_the_default_response_limit_is_64_mib(digits_model_dir):
    settings = Settings(model_dir=digits_model_dir)
    assert settings.max_response_bytes == 64 * 1024 * 1024
    assert settings.limits.max_response_bytes == 64 * 1024 * 1024


def test_the_issues_sample_request_gets_413_before_any_decoding(start_app, digits_model_dir, counting):
    client = start_app(digits_model_dir, counting)
    counting.decoded.clear()
    body = {"instances": [DIGIT] * 4096, "n_samples": 244, "decode": True, "seed": 0}
    size = json_bytes((4096, 244, 4), (4096, 244, 1, 8, 8))
    assert error(client.post("/sample", json=body), 413) == (
        f"the answer (4096 x 244 x 4 + 4096 x 244 x 1 x 8 x 8 numbers) may take up to {size} bytes, over the limit of "
        f"{64 * 1024 * 1024} bytes (VAE_MAX_RESPONSE_BYTES); send fewer instances or draws per request"
    )
    assert counting.decoded == []


@pytest.mark.parametrize(
    "path, body, headers, what, size",
    [
        ("/decode", {"z": [[0.0] * 4] * 40}, {}, "40 x 64 numbers", json_bytes((40, 1, 8, 8))),
        (
            "/decode",
            {"z": [[0.0] * 4] * 400},
            {"accept": "image/png"},
            "a PNG of 1 x 400 images of 8x8",
            8 * (1 + 3200) + 8 * (1 + 3200) // 1024 + 4096,
        ),
        (
            "/elbo",
            {"instances": [DIGIT] * 10, "feature_scores": True},
            {},
            "10 instances' scores and feature scores",
            json_bytes(*[(10,)] * 7, (10, 1, 8, 8)),
        ),
        ("/encode", {"instances": [DIGIT] * 100}, {}, "3 x 100 x 4 numbers", json_bytes(*[(100, 4)] * 3)),
        (
            "/heatmap",
            {"instances": [DIGIT] * 100},
            {},
            "a PNG of 1 x 100 images of 8x8",
            8 * (1 + 3 * 800) + 8 * (1 + 3 * 800) // 1024 + 4096,
        ),
    ],
)
def test_an_answer_over_the_limit_gets_413_with_the_numbers(
    start_app, digits_model_dir, path, body, headers, what, size
):
    client = start_app(digits_model_dir, max_response_bytes=8192)
    assert error(client.post(path, json=body, headers=headers), 413) == (
        f"the answer ({what}) may take up to {size} bytes, over the limit of 8192 bytes (VAE_MAX_RESPONSE_BYTES); "
        "send fewer instances or draws per request"
    )


def test_the_oip_answer_is_bounded_too(start_app, digits_model_dir):
    client = start_app(digits_model_dir, max_response_bytes=8192)
    request = {
        "inputs": [{"name": "instances", "shape": [2, 64], "datatype": "FP64", "data": DIGIT * 2}],
        "parameters": {"n_samples": 30, "decode": True},
    }
    response = client.post("/v2/models/digits-sample/infer", json=request)
    assert response.status_code == 413
    assert response.json() == {
        "error": (
            f"the answer (z [2, 30, 4], x [2, 30, 1, 8, 8]) may take up to {1024 + 240 * 25 + 256 + 3840 * 25 + 256} "
            "bytes, over the limit of 8192 bytes (VAE_MAX_RESPONSE_BYTES); send fewer instances or draws per request"
        )
    }


def test_json_bytes_bounds_what_orjson_writes():
    rng = np.random.default_rng(0)
    for shape in [(3,), (2, 5), (4, 3, 2), (1, 1, 8, 8)]:
        worst = np.full(shape, -2.2250738585072014e-308)
        assert len(write_json({"x": worst})) <= json_bytes(shape)
        assert len(write_json({"x": rng.standard_normal(shape)})) <= json_bytes(shape)


def test_write_json_gives_orjsons_bytes_a_slice_at_a_time():
    import orjson

    rng = np.random.default_rng(1)
    content = {
        "z": rng.standard_normal((300, 500, 4)),
        "seed": 3,
        "x": rng.standard_normal((2, 70_000)),
        "flags": rng.standard_normal(200_000) > 0,
        "outputs": [{"name": "x", "shape": [2, 3], "data": rng.standard_normal(6)}],
    }
    assert write_json(content) == orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def test_the_client_bounds_answers_with_the_servers_arithmetic():
    for rows, shapes in [(7, [(4,)] * 3), (5, [(3, 4), (3, 1, 8, 8)]), (9, [()] * 7 + [(1, 8, 8)]), (2, [(64,)])]:
        assert answer_bytes(rows, shapes) == json_bytes(*[(rows, *shape) for shape in shapes])


def test_the_client_splits_calls_within_the_response_limit(start_app, digits_model_dir):
    limit = 20_000
    client = start_app(digits_model_dir, max_response_bytes=limit)
    x = np.tile(np.asarray(DIGIT), (40, 1))
    vae = VaeClient("http://testserver", http_client=client, max_response_bytes=limit)
    paths = []
    client.event_hooks["request"] = [lambda request: paths.append(request.url.path)]
    try:
        sampled = vae.sample(x, n_samples=3, decode=True, seed=1)
        scored = vae.elbo(x, feature_scores=True, seed=1)
        decoded = vae.decode(np.zeros((40, 4)))
    finally:
        client.event_hooks["request"] = []
    assert sampled.x.shape == (40, 3, 1, 8, 8) and scored.feature_scores.shape == (40, 1, 8, 8)
    assert decoded.shape == (40, 1, 8, 8)
    per_sample = (limit - 1024 - 6) // (25 * 3 * 68 + 3 * (1 + 3) + 3 * (1 + 3 + 3))
    assert paths.count("/sample") == math.ceil(40 / per_sample) > 1
    assert paths.count("/elbo") > 1 and paths.count("/decode") > 1


# --- the decoder in bounded chunks, stopping at the deadline -------------------------------------------------
@pytest.mark.parametrize(
    "path, body, headers",
    [
        ("/sample", {"instances": [DIGIT] * 3, "n_samples": 9000, "decode": True, "seed": 0}, {"accept": "image/png"}),
        ("/sample", {"n_samples": 9000, "decode": True, "seed": 0}, {}),
        ("/decode", {"z": [[0.0] * 4] * 20_000}, {"accept": "image/png"}),
        ("/heatmap", {"instances": [DIGIT] * 3, "n_samples": 9000, "seed": 0}, {}),
        ("/elbo", {"instances": [DIGIT] * 3, "n_samples": 9000, "iw_samples": 9000, "seed": 0}, {}),
    ],
)
def test_the_decoder_runs_in_bounded_chunks(start_app, digits_model_dir, counting, path, body, headers):
    client = start_app(digits_model_dir, counting, max_response_bytes=2**30, max_instances=20_000)
    counting.decoded.clear()
    assert client.post(path, json=body, headers=headers).status_code == 200
    assert max(counting.decoded) <= scoring.DECODE_CHUNK_ROWS and len(counting.decoded) >= 2


def test_chunked_decoding_gives_the_same_numbers(digits_model_dir):
    artifact = load_artifact(digits_model_dir)
    engine = VaeEngine(artifact.manifest, OnnxRuntime(artifact))
    z = np.random.default_rng(0).standard_normal((20_000, 4)).astype(np.float32)
    whole = engine.mean_to_raw(engine.runtime.decode(z))
    np.testing.assert_allclose(engine.decode(z), whole, rtol=1e-6, atol=1e-6)


def test_a_request_that_times_out_stops_at_the_next_chunk(start_app, digits_model_dir):
    runtime = CountingRuntime(load_artifact(digits_model_dir), stall_s=0.1)
    client = start_app(digits_model_dir, runtime, request_timeout_s=0.5, batching=False)
    runtime.decoded.clear()
    body = {"instances": [DIGIT] * 40, "n_samples": 9999, "iw_samples": 1, "seed": 0}  # 49 chunks: 5 s of stalls
    response = client.post("/elbo", json=body)
    assert response.status_code == 503
    assert response.json() == {
        "error": "the request did not finish within 0.5 s (VAE_REQUEST_TIMEOUT_S)",
        "code": "timeout",
    }
    time.sleep(0.5)
    calls = len(runtime.decoded)
    time.sleep(0.5)
    assert len(runtime.decoded) == calls <= 8  # it stopped near the deadline, not after all 49 chunks


def test_a_deadline_stops_the_engine_between_chunks(digits_model_dir):
    artifact = load_artifact(digits_model_dir)
    runtime = CountingRuntime(artifact)
    engine = VaeEngine(artifact.manifest, runtime)
    with pytest.raises(Timeout, match=r"^the request did not finish within 1 s \(VAE_REQUEST_TIMEOUT_S\)$"):
        engine.sample(None, 10_000, 0, True, Deadline(time.monotonic() - 1, 1.0))
    assert runtime.decoded == []
    assert Deadline.latest([Deadline(1.0, 1), Deadline(3.0, 1)]).at == 3.0 and Deadline.latest([None]) is None


# --- content types ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None, "application/jsonx"])
@pytest.mark.parametrize("path", ["/encode", "/sample", "/decode", "/elbo", "/heatmap"])
def test_other_content_types_get_415(digits_client, path, content_type):
    headers = {"content-type": content_type} if content_type else {}
    response = digits_client.post(path, content=json.dumps({"instances": [DIGIT], "z": [[0.0] * 4]}), headers=headers)
    takes = "application/json" if path == "/decode" else "application/json, application/x-npy or multipart/form-data"
    given = repr(content_type) if content_type else "missing"
    assert error(response, 415) == f"Content-Type: {given}; {path} takes {takes}"
    assert response.json()["code"] == "unsupported_media_type"


def test_json_with_a_charset_is_json(digits_client):
    response = digits_client.post(
        "/elbo", content=json.dumps({"instances": [DIGIT]}), headers={"content-type": "application/json; charset=utf-8"}
    )
    assert response.status_code == 200


def test_oip_takes_json_binary_or_no_content_type(digits_client):
    request = {"inputs": [{"name": "z", "shape": [1, 4], "datatype": "FP64", "data": [0.0] * 4}]}
    path = "/v2/models/digits-decode/infer"
    plain = digits_client.post(path, content=json.dumps(request), headers={"content-type": "text/plain"})
    assert plain.status_code == 415
    assert plain.json() == {
        "error": "Content-Type: 'text/plain'; /v2/models/digits-decode/infer takes "
        "application/json or application/octet-stream"
    }
    assert digits_client.post(path, content=json.dumps(request)).status_code == 200  # Triton's client sends none


# --- 2. no 500 from any nesting --------------------------------------------------------------------------------
def nested(depth: int) -> str:
    return "[" * depth + "0" + "]" * depth


@pytest.mark.parametrize("depth", [33, 65, 1000, 1025, 100_000])
@pytest.mark.parametrize(
    "path, field",
    [
        ("/encode", "instances"),
        ("/sample", "instances"),
        ("/elbo", "instances"),
        ("/heatmap", "instances"),
        ("/decode", "z"),
    ],
)
def test_any_nesting_gets_a_4xx_that_says_what_was_wrong(digits_client, path, field, depth):
    response = digits_client.post(path, content=f'{{"{field}": {nested(depth)}}}', headers=JSON_HEADERS)
    if depth <= 65:
        inner = nested(depth - 32)  # the list where a number should be, as Python writes it
        described = inner if len(inner) <= 40 else inner[:37] + "..."
        assert error(response, 422) == f"{field}{'[0]' * 32}: expected a number, got list {described}"
    elif depth == 1000:
        assert error(response, 422).startswith(f"{field}{'[0]' * 32}: expected a number, got list [[[[[")
    else:
        assert error(response, 400).startswith("the body is not valid JSON: depth limit exceeded: ")


@pytest.mark.parametrize("depth", [33, 1025])
def test_any_nesting_in_oip_gets_a_400(digits_client, depth):
    body = f'{{"inputs": [{{"name": "instances", "shape": [1, 64], "datatype": "FP64", "data": {nested(depth)}}}]}}'
    response = digits_client.post("/v2/models/digits-elbo/infer", content=body, headers=JSON_HEADERS)
    assert response.status_code == 400
    if depth == 33:
        assert response.json() == {"error": f"instances{'[0]' * 32}: expected a number, got list [0]"}
    else:
        assert response.json()["error"].startswith("the inference header is not valid JSON: depth limit exceeded: ")


def test_nesting_in_a_form_field_gets_a_422(digits_client):
    files = [("files", ("a.png", png_of(np.zeros((8, 8), dtype=np.uint8)), "image/png"))]
    deep = digits_client.post("/elbo", files=files, data={"n_samples": nested(100)})
    assert error(deep, 422).startswith("n_samples: Input should be a valid integer (got [[[[[")
    long = digits_client.post("/elbo", files=files, data={"seed": nested(2000)})
    assert error(long, 422) == (
        "seed: 4001 characters; a form field holds one option, a number or true or false (at most 256 characters)"
    )


def test_a_ragged_batch_with_a_deep_item_gets_a_422(digits_client):
    body = f'{{"instances": [{json.dumps(DIGIT)}, {nested(900)}]}}'
    message = error(digits_client.post("/elbo", content=body, headers=JSON_HEADERS), 422)
    assert message.startswith(f"instances[1]{'[0]' * 31}: expected a number, got list [[[[[")


# --- 3. measured before decoded -------------------------------------------------------------------------------
def test_a_json_body_with_more_values_than_any_request_gets_413_before_parsing(
    start_app, digits_model_dir, monkeypatch
):
    client = start_app(digits_model_dir, max_instances=2)
    most = 2 * 2 * 64 + 4096
    body = '{"instances": [' + ",".join(["[]"] * 5000) + "]}"  # 4999 commas, 5001 "[", 1 "{", and the first value
    monkeypatch.setattr(body_module.orjson, "loads", lambda raw: pytest.fail("parsed"))
    assert error(client.post("/elbo", content=body, headers=JSON_HEADERS), 413) == (
        f"the body holds up to {4999 + 5001 + 1 + 1} JSON values; a request to this model takes at most {most} "
        "(twice VAE_MAX_INSTANCES x the values per instance): send fewer instances per request, or a .npy body"
    )


def test_large_bodies_are_parsed_off_the_event_loop(digits_client, monkeypatch):
    threads = []
    parse = body_module.parse_json_body

    def recording(*args):
        try:
            asyncio.get_running_loop()
            threads.append("event loop")
        except RuntimeError:
            threads.append("worker")
        return parse(*args)

    monkeypatch.setattr(body_module, "parse_json_body", recording)
    small = {"instances": [DIGIT]}
    large = {"instances": [[1.0] * 64] * 600}  # ~230 KB
    assert digits_client.post("/elbo", json=small).status_code == 200
    assert digits_client.post("/elbo", json=large).status_code == 200
    assert threads == ["event loop", "worker"]


def npy_of(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_a_large_npy_of_the_wrong_shape_is_refused_from_its_header(digits_client, monkeypatch):
    body = npy_of(np.zeros((4000, 15_000), dtype=np.int8))  # 60 MB
    monkeypatch.setattr(inputs, "check_array", lambda *a: pytest.fail("converted"))  # where the data is converted
    response = digits_client.post("/elbo", content=body, headers={"content-type": "application/x-npy"})
    assert error(response, 422) == (
        "instances: each instance must be 64 numbers or nested lists shaped [1, 8, 8]; got instances shaped [15000]"
    )


def test_a_npy_whose_data_is_short_gets_400(digits_client):
    body = npy_of(np.zeros((2, 64)))[:-8]
    response = digits_client.post("/elbo", content=body, headers={"content-type": "application/x-npy"})
    assert error(response, 400) == (
        "the body is not a readable .npy array: its header promises 1024 bytes of data ([2, 64] of float64), "
        "the body holds 1016"
    )


def test_a_npy_body_is_read_on_the_event_loop_only_while_its_float64_array_is_small():
    small = npy_of(np.zeros((100, 64), dtype=np.uint8))
    assert inputs.npy_float64_bytes(small) == 100 * 64 * 8
    # 200 KiB of uint8 on the wire, 1.6 MiB once converted: over INLINE_NPY_BYTES, so the worker pool reads it.
    grows = npy_of(np.zeros((3200, 64), dtype=np.uint8))
    assert len(grows) < body_module.INLINE_NPY_BYTES < inputs.npy_float64_bytes(grows) == 3200 * 64 * 8
    assert inputs.npy_float64_bytes(b"not npy at all") == len(b"not npy at all")  # read_npy says what is wrong


def png_of(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    """13000 x 13000 black pixels: 169 million of them, in about 650 KB."""
    return png_of(np.zeros((13000, 13000), dtype=np.uint8))


def test_an_image_of_the_wrong_size_is_refused_before_any_pixel_is_decoded(digits_client, huge_png, monkeypatch):
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    response = digits_client.post("/elbo", files=[("files", ("huge.png", huge_png, "image/png"))])
    assert error(response, 422) == "huge.png: is 13000x13000 pixels; the model takes 8x8 (width x height)"


def test_a_resizing_model_refuses_a_decompression_bomb_from_its_header(huge_png, monkeypatch):
    spec = SimpleNamespace(channels=1, height=8, width=8, resize=True, max_value=255.0)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    with pytest.raises(LimitExceeded) as raised:
        decode_upload(huge_png, "huge.png", spec)
    assert raised.value.message == (
        "huge.png: is 13000x13000 = 169000000 pixels; this model takes at most 16777216 (256 times its 8x8 input, "
        "and at least 16777216)"
    )


def test_a_resizing_model_takes_an_ordinary_photo():
    spec = SimpleNamespace(channels=1, height=8, width=8, resize=True, max_value=255.0)
    row = decode_upload(png_of(np.full((480, 640), 255, dtype=np.uint8)), "photo.png", spec)
    assert row.shape == (64,) and np.all(row == 255.0)


# --- 6. values beyond float32 ----------------------------------------------------------------------------------
def test_z_beyond_float32_gets_422(digits_client):
    response = digits_client.post("/decode", json={"z": [[0.0, 1e39, 0.0, 0.0]]})
    assert (
        error(response, 422)
        == "z[0][1]: 1e+39 is beyond float32, the model's precision (largest magnitude 3.40282e+38)"
    )


@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
def test_z_beyond_float32_gets_400_in_oip(digits_client, datatype):
    request = {"inputs": [{"name": "z", "shape": [1, 4], "datatype": datatype, "data": [0.0, 0.0, -1e39, 0.0]}]}
    response = digits_client.post("/v2/models/digits-decode/infer", json=request)
    assert response.status_code == 400
    expected = {
        "FP64": "z[0][2]: -1e+39 is beyond float32, the model's precision (largest magnitude 3.40282e+38)",
        "FP32": "z: element 2 is -1e+39, beyond FP32, the tensor's datatype (largest magnitude 3.40282e+38)",
    }
    assert response.json() == {"error": expected[datatype]}


def test_instances_beyond_float32_get_400_in_oip(digits_client):
    request = {"inputs": [{"name": "instances", "shape": [1, 64], "datatype": "FP32", "data": [1e39] + DIGIT[1:]}]}
    response = digits_client.post("/v2/models/digits-elbo/infer", json=request)
    assert response.status_code == 400
    assert response.json() == {
        "error": "instances: element 0 is 1e+39, beyond FP32, the tensor's datatype (largest magnitude 3.40282e+38)"
    }


def test_a_decoder_output_that_overflows_gets_422(digits_model_dir):
    artifact = load_artifact(digits_model_dir)

    class Overflowing(OnnxRuntime):
        def decode(self, z):
            return tuple(np.full_like(p, np.nan) for p in super().decode(z))

    engine = VaeEngine(artifact.manifest, Overflowing(artifact))
    with pytest.raises(InvalidInput) as raised:
        engine.decode(np.zeros((3, 4), dtype=np.float32))
    assert raised.value.message == (
        "z[0]: decoding it overflows (the decoder's output is not finite); latent vectors this far from the prior "
        "N(0, I) cannot be decoded"
    )


# --- 7. the client's retries end at a total deadline -----------------------------------------------------------
def test_the_clients_retries_end_at_the_retry_deadline():
    now = [0.0]
    attempts = []

    def handle(request):
        attempts.append(now[0])
        return httpx.Response(503, json={"error": "busy", "code": "timeout"}, headers={"retry-after": "4"})

    def sleep(seconds):
        now[0] += seconds

    vae = VaeClient(
        "http://testserver",
        transport=httpx.MockTransport(handle),
        max_retries=100,
        retry_deadline_s=10.0,
        sleep=sleep,
        clock=lambda: now[0],
    )
    vae._card = {"limits": {}}
    with pytest.raises(VaeHTTPError) as raised:
        vae.encode(np.zeros((1, 64)))
    assert (raised.value.status_code, raised.value.code, raised.value.message) == (503, "timeout", "busy")
    assert attempts == [0.0, 4.0, 8.0]  # a fourth attempt would start at 12 s, past the 10 s deadline


# --- large answers are streamed, with the same numbers ---------------------------------------------------------
def test_a_large_answer_is_streamed_with_the_same_numbers(digits_client, digits_model_dir):
    response = digits_client.post("/sample", json={"n_samples": 5000, "decode": True, "seed": 3})
    assert response.status_code == 200 and "content-length" not in response.headers  # chunked: streamed
    artifact = load_artifact(digits_model_dir)
    alone = VaeEngine(artifact.manifest, OnnxRuntime(artifact)).sample(None, 5000, 3, True)
    answer = response.json()
    np.testing.assert_allclose(answer["x"], alone.x, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(answer["z"], dtype=np.float32), alone.z)


def test_a_large_binary_oip_answer_is_streamed_with_its_lengths(digits_client):
    request = {"inputs": [{"name": "z", "shape": [4000, 4], "datatype": "FP64", "data": [0.5] * 16000}]}
    path = "/v2/models/digits-decode/infer"
    as_json = digits_client.post(path, json=request).json()
    binary = digits_client.post(path, json=request | {"parameters": {"binary_data_output": True}})
    length = int(binary.headers["inference-header-content-length"])
    assert int(binary.headers["content-length"]) == len(binary.content) == length + 4000 * 64 * 8
    header = json.loads(binary.content[:length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 4000 * 64 * 8}
    data = np.frombuffer(binary.content[length:], dtype="<f8")
    np.testing.assert_array_equal(data, as_json["outputs"][0]["data"])


def test_an_image_beyond_pillows_own_bomb_limit_gets_413(monkeypatch):
    spec = SimpleNamespace(channels=1, height=8, width=8, resize=True, max_value=255.0)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above twice this
    with pytest.raises(LimitExceeded) as raised:
        decode_upload(png_of(np.zeros((50, 50), dtype=np.uint8)), "big.png", spec)
    assert raised.value.message.startswith("big.png: Image size (2500 pixels) exceeds limit of 2000 pixels")


def test_a_bernoulli_input_a_rounding_error_outside_its_range_scores_as_the_edge(digits_model_dir):
    # Clients' float formatting may land a hair outside the data range: within 1e-6 (model space) it is clipped.
    artifact = load_artifact(digits_model_dir)
    engine = VaeEngine(artifact.manifest, OnnxRuntime(artifact))
    to_raw = artifact.manifest.preprocessing.to_raw
    edges = np.tile([0.0, 1.0], 32)[None, :]  # (1, 64) model-space values at both ends
    beyond = edges + np.tile([-5e-7, 5e-7], 32)[None, :]
    inside = np.full((1, 64), 0.25)
    assert np.array_equal(engine.to_model(to_raw(beyond)), engine.to_model(to_raw(edges)))
    assert np.array_equal(engine.to_model(to_raw(edges)).reshape(1, 64), edges.astype(np.float32))
    assert np.array_equal(engine.to_model(to_raw(inside)).reshape(1, 64), inside.astype(np.float32))
    with pytest.raises(InvalidInput, match=r"instances\[0\]: feature 1 is .*outside the model's data range"):
        engine.to_model(to_raw(edges + np.tile([0.0, 2e-6], 32)[None, :]))
