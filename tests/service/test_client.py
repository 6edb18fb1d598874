"""The client (client/vae_client) against the real app, in process and as a `vae serve` process; scripted transports."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import fields

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from vae_client.client import (
    AsyncVaeClient,
    ElboResult,
    Encoded,
    Images,
    Sampled,
    VaeClient,
    VaeConnectionError,
    VaeHTTPError,
    VaeInputError,
    VaeModelChanged,
)

from service.http.app import create_app
from service.http.schemas import ElboResponse, EncodeResponse, SampleResponse
from service.http.settings import Settings
from tests.helpers import free_port, start_server, stop

BASE = "http://testserver"
CARD = {"limits": {"max_instances": 4096, "max_samples": 10_000, "max_iw_samples": 10_000, "max_draws": 1_000_000}}
ENCODED = {"mu": [[0.5]], "sigma": [[1.0]], "logvar": [[0.0]]}
NOT_READY = {"error": "the model is still loading; retry when GET /readyz returns 200", "code": "model_not_ready"}


@pytest.fixture(scope="module")
def app_client(digits_model_dir):
    """The digits model behind the onnx runtime, started once."""
    with TestClient(create_app(Settings(model_dir=digits_model_dir, runtime="onnx"))) as client:
        yield client


@pytest.fixture(scope="module")
def limited_client(digits_model_dir):
    """The same model with small request limits: 4 instances, 15 draws."""
    settings = Settings(model_dir=digits_model_dir, runtime="onnx", max_instances=4, max_draws=15)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def vae(app_client) -> VaeClient:
    return VaeClient(BASE, http_client=app_client)


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().data[:8].astype(np.float64)  # (8, 64) raw units


@contextmanager
def recording(http: httpx.Client):
    """The paths of the requests sent through `http` meanwhile."""
    paths: list[str] = []
    saved = http.event_hooks
    http.event_hooks = {"request": [lambda request: paths.append(request.url.path)], "response": []}
    try:
        yield paths
    finally:
        http.event_hooks = saved


def native(http: httpx.Client, path: str, body: dict, chunk: int | None = None, seed: int | None = None) -> dict:
    """The JSON API's answer, or with `chunk`, the answers to consecutive `chunk`-row requests (with seed + i
    when seeded), joined as the client joins them: arrays concatenated, scalars from the first."""
    if chunk is None:
        answers = [http.post(path, json=body).json()]
    else:
        instances = body["instances"]
        answers = [
            http.post(
                path,
                json=body
                | {"instances": instances[start : start + chunk]}
                | ({} if seed is None else {"seed": seed + i}),
            ).json()
            for i, start in enumerate(range(0, len(instances), chunk))
        ]
    return {
        key: np.concatenate([np.asarray(a[key]) for a in answers]) if isinstance(value, list) else value
        for key, value in answers[0].items()
    }


def assert_same(result, expected: dict) -> None:
    given = {f.name for f in fields(result) if getattr(result, f.name) is not None}
    assert given == set(expected)
    for key, value in expected.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(getattr(result, key), value, strict=True)
        else:
            assert getattr(result, key) == value, key


def as_dict(result) -> dict:
    """A result's fields that are set, as assert_same expects them."""
    return {f.name: getattr(result, f.name) for f in fields(result) if getattr(result, f.name) is not None}


def error_of(raised: pytest.ExceptionInfo[VaeHTTPError]) -> tuple[int, str | None, str]:
    return raised.value.status_code, raised.value.code, raised.value.message


def scripted(handler, **options) -> tuple[VaeClient, list[float]]:
    """A VaeClient over httpx.MockTransport(handler), recording the back-off pauses instead of sleeping."""
    pauses: list[float] = []
    return VaeClient(BASE, transport=httpx.MockTransport(handler), sleep=pauses.append, **options), pauses


# --- the results mirror the server's answers ----------------------------------------------------------------
@pytest.mark.parametrize(
    "result, response", [(Encoded, EncodeResponse), (Sampled, SampleResponse), (ElboResult, ElboResponse)]
)
def test_result_fields_are_the_response_fields(result, response):
    assert [f.name for f in fields(result)] == list(response.model_fields)


def test_encode_equals_the_json_api(vae, app_client, rows):
    assert_same(vae.encode(rows), native(app_client, "/encode", {"instances": rows.tolist()}))


def test_encode_takes_instances_shaped_like_input_shape(vae, rows):
    np.testing.assert_array_equal(vae.encode(rows.reshape(8, 1, 8, 8)).mu, vae.encode(rows).mu)


def test_sample_equals_the_json_api(vae, app_client, rows):
    body = {"instances": rows[:3].tolist(), "n_samples": 3, "seed": 7, "decode": True}
    assert_same(vae.sample(rows[:3], n_samples=3, seed=7, decode=True), native(app_client, "/sample", body))


def test_sample_from_the_prior_equals_the_json_api(vae, app_client):
    sampled = vae.sample(n_samples=4, seed=2)
    assert_same(sampled, native(app_client, "/sample", {"n_samples": 4, "seed": 2}))
    assert sampled.z.shape == (1, 4, 4) and sampled.x is None


def test_decode_equals_the_json_api(vae, app_client):
    z = np.random.default_rng(0).standard_normal((5, 4))
    np.testing.assert_array_equal(vae.decode(z), native(app_client, "/decode", {"z": z.tolist()})["x"], strict=True)


@pytest.mark.parametrize(
    "options",
    [
        {"n_samples": 4, "iw_samples": 8, "seed": 3, "feature_scores": True, "fpr": 0.05},
        {"seed": 0, "threshold": 25.5},
        {"n_samples": 2, "seed": 11},
    ],
    ids=["fpr-features", "threshold", "calibrated-k"],
)
def test_elbo_equals_the_json_api(vae, app_client, rows, options):
    expected = native(app_client, "/elbo", {"instances": rows.tolist(), **options})
    assert_same(vae.elbo(rows, **options), expected)


def test_a_call_without_seed_returns_the_seed_that_repeats_it(vae, rows):
    first = vae.elbo(rows, n_samples=3)
    again = vae.elbo(rows, n_samples=3, seed=first.seed)
    np.testing.assert_array_equal(again.reconstruction, first.reconstruction)
    assert vae.elbo(rows, n_samples=3).seed != first.seed


# --- batching -------------------------------------------------------------------------------------------------
def test_a_split_elbo_equals_the_chunked_native_calls_with_seed_plus_i(app_client, rows):
    vae = VaeClient(BASE, http_client=app_client, max_batch=3)
    with recording(app_client) as paths:
        scored = vae.elbo(rows, n_samples=2, iw_samples=5, seed=5, feature_scores=True)
    assert paths == ["/v1/model", "/elbo", "/elbo", "/elbo"]  # 3 + 3 + 2 rows
    body = {"instances": rows.tolist(), "n_samples": 2, "iw_samples": 5, "feature_scores": True}
    assert_same(scored, native(app_client, "/elbo", body, chunk=3, seed=5))


def test_a_split_sample_equals_the_chunked_native_calls_with_seed_plus_i(app_client, rows):
    vae = VaeClient(BASE, http_client=app_client, max_batch=3)
    body = {"instances": rows.tolist(), "n_samples": 2, "decode": True}
    expected = native(app_client, "/sample", body, chunk=3, seed=9)
    assert_same(vae.sample(rows, n_samples=2, seed=9, decode=True), expected)


def test_split_encode_and_decode_equal_one_request(vae, app_client, rows):
    split = VaeClient(BASE, http_client=app_client, max_batch=3)
    with recording(app_client) as paths:
        encoded = split.encode(rows)
        decoded = split.decode(encoded.mu)
    assert paths == ["/v1/model"] + ["/encode"] * 3 + ["/decode"] * 3
    assert_same(encoded, as_dict(vae.encode(rows)))
    np.testing.assert_array_equal(decoded, vae.decode(encoded.mu), strict=True)


def test_requests_stay_within_the_limits_of_v1_model(limited_client, rows):
    vae = VaeClient(BASE, http_client=limited_client)
    with recording(limited_client) as paths:
        encoded = vae.encode(rows)  # max_instances 4: 4 + 4
        scored = vae.elbo(rows, n_samples=2, iw_samples=3, seed=0)  # max_draws 15 / (2 + 3) draws: 3 + 3 + 2
    assert paths == ["/v1/model", "/encode", "/encode", "/elbo", "/elbo", "/elbo"]
    assert_same(encoded, native(limited_client, "/encode", {"instances": rows.tolist()}, chunk=4))
    body = {"instances": rows.tolist(), "n_samples": 2, "iw_samples": 3}
    assert_same(scored, native(limited_client, "/elbo", body, chunk=3, seed=0))


def test_requests_stay_within_max_body_bytes(digits_model_dir, rows):
    with TestClient(create_app(Settings(model_dir=digits_model_dir, max_body_bytes=1024))) as small:
        # The server's limit, from GET /v1/model: one 640-byte row per body rather than one 1664-byte body.
        with recording(small) as paths:
            encoded = VaeClient(BASE, http_client=small).encode(rows[:3])
        assert paths == ["/v1/model"] + ["/encode"] * 3 and encoded.mu.shape == (3, 4)
        # A smaller limit of the client's own (a proxy's, say) caps it further.
        with recording(small) as paths:
            VaeClient(BASE, http_client=small, max_body_bytes=700).encode(rows[:3])
        assert paths == ["/v1/model"] + ["/encode"] * 3

    # A server that does not say its limit: the client's max_body_bytes is all it goes by.
    card = {"limits": {"max_instances": 4096, "max_draws": 1_000_000}}
    with TestClient(create_app(Settings(model_dir=digits_model_dir, max_body_bytes=1024))) as small:
        vae = VaeClient(BASE, http_client=small)
        vae._card = card  # as if GET /v1/model had answered without max_body_bytes
        with pytest.raises(VaeHTTPError) as refused:
            vae.encode(rows[:3])  # one 1664-byte body
        too_large = "the body is 1664 bytes; the limit is 1024 bytes (VAE_MAX_BODY_BYTES)"
        assert error_of(refused) == (413, "limit_exceeded", too_large)


def test_vae_score_and_a_split_elbo_agree(digits_model_dir, app_client, rows, tmp_path):
    from service.core.bulk import score_file

    np.save(tmp_path / "rows.npy", rows)
    score_file(
        digits_model_dir,
        tmp_path / "rows.npy",
        tmp_path / "scores.csv",
        n_samples=2,
        iw_samples=4,
        seed=4,
        chunk_rows=3,
        progress=False,
    )
    table = np.genfromtxt(tmp_path / "scores.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
    scored = VaeClient(BASE, http_client=app_client, max_batch=3).elbo(rows, n_samples=2, iw_samples=4, seed=4)
    for name in ("elbo", "reconstruction", "kl", "log_likelihood", "anomaly_score", "p_value"):
        np.testing.assert_array_equal(table[name], getattr(scored, name), err_msg=name)


# --- errors ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, body",
    [
        (lambda vae, x: vae.elbo(x[:, :5]), {"instances": [[0.0] * 5]}),
        (lambda vae, x: vae.elbo(x, n_samples=0), {"instances": [[0.0] * 64], "n_samples": 0}),
        (lambda vae, x: vae.elbo(x, fpr=1.5), {"instances": [[0.0] * 64], "fpr": 1.5}),
        (lambda vae, x: vae.decode(np.zeros((2, 3))), {"z": [[0.0] * 3]}),
    ],
    ids=["shape", "n_samples", "fpr", "latent-dim"],
)
def test_an_error_carries_the_servers_status_code_and_message(vae, app_client, rows, call, body):
    path = "/decode" if "z" in body else "/elbo"
    expected = app_client.post(path, json=body)
    with pytest.raises(VaeHTTPError) as raised:
        call(vae, rows)
    assert raised.value.status_code == expected.status_code == 422
    assert (raised.value.code, raised.value.message) == (expected.json()["code"], expected.json()["error"])
    assert raised.value.request_id


def test_a_single_instance_is_refused_before_sending(vae, rows):
    with pytest.raises(VaeInputError, match=r"x: expected a batch shaped \(B, \.\.\.\), got shape \[64\]"):
        vae.encode(rows[0])


def test_an_api_key_is_sent_as_a_bearer_token(digits_model_dir, rows):
    with TestClient(create_app(Settings(model_dir=digits_model_dir, api_key="s3cret"))) as guarded:
        with pytest.raises(VaeHTTPError) as refused:
            VaeClient(BASE, http_client=guarded).model()
        needs_key = "this service needs an API key: send the header `Authorization: Bearer <key>`"
        assert error_of(refused) == (401, "unauthorized", needs_key)
        with pytest.raises(VaeHTTPError, match="401 unauthorized"):
            VaeClient(BASE, "wrong", http_client=guarded).encode(rows)
        keyed = VaeClient(BASE, "s3cret", http_client=guarded)
        assert keyed.model()["limits"]["max_instances"] == 4096
        assert keyed.encode(rows).mu.shape == (8, 4)


def test_ready_is_false_until_the_model_is_loaded(digits_model_dir):
    unstarted = TestClient(create_app(Settings(model_dir=digits_model_dir)))  # no lifespan: nothing loaded
    pauses: list[float] = []
    vae = VaeClient(BASE, http_client=unstarted, max_retries=2, sleep=pauses.append)
    assert vae.ready() is False
    with pytest.raises(VaeHTTPError) as raised:
        vae.model()
    assert error_of(raised) == (503, NOT_READY["code"], NOT_READY["error"])
    assert len(pauses) == 2


# --- retries (scripted transports) ----------------------------------------------------------------------------
def encode_server(failures: list[httpx.Response | Exception]):
    """Answers GET /v1/model, and POST /encode with each of `failures` in turn, then ENCODED; keeps the bodies."""
    bodies: list[bytes] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/model":
            return httpx.Response(200, json=CARD)
        bodies.append(request.content)
        if len(bodies) <= len(failures):
            failure = failures[len(bodies) - 1]
            if isinstance(failure, Exception):
                raise failure
            return failure
        return httpx.Response(200, json=ENCODED)

    return handle, bodies


def test_a_503_is_retried_with_exponential_backoff_and_the_same_request():
    handle, bodies = encode_server([httpx.Response(503, json=NOT_READY)] * 2)
    vae, pauses = scripted(handle, backoff_s=0.5)
    encoded = vae.encode(np.ones((1, 64)))
    assert encoded.mu.tolist() == [[0.5]]
    assert len(bodies) == 3 and bodies[0] == bodies[1] == bodies[2]
    assert len(pauses) == 2
    assert 0.25 <= pauses[0] <= 0.5 and 0.5 <= pauses[1] <= 1.0  # half to all of 0.5 * 2^k


def test_backoff_stops_growing_at_max_backoff():
    handle, _ = encode_server([httpx.Response(503, json=NOT_READY)] * 6)
    vae, pauses = scripted(handle, max_retries=6, backoff_s=1.0, max_backoff_s=2.0)
    vae.encode(np.ones((1, 64)))
    assert len(pauses) == 6 and all(1.0 <= p <= 2.0 for p in pauses[1:])


def test_retry_after_is_honoured():
    handle, _ = encode_server([httpx.Response(503, json=NOT_READY, headers={"retry-after": "7"})])
    vae, pauses = scripted(handle)
    vae.encode(np.ones((1, 64)))
    assert pauses == [7.0]


def test_the_last_503_is_raised_after_max_retries():
    handle, bodies = encode_server([httpx.Response(503, json=NOT_READY)] * 10)
    vae, pauses = scripted(handle, max_retries=3)
    with pytest.raises(VaeHTTPError) as raised:
        vae.encode(np.ones((1, 64)))
    assert error_of(raised) == (503, "model_not_ready", NOT_READY["error"])
    assert len(bodies) == 4 and len(pauses) == 3


def test_a_422_is_not_retried():
    invalid = {"error": "instances: each instance must be 64 numbers; got shaped [5]", "code": "invalid_input"}
    handle, bodies = encode_server([httpx.Response(422, json=invalid)] * 10)
    vae, pauses = scripted(handle)
    with pytest.raises(VaeHTTPError) as raised:
        vae.encode(np.ones((1, 64)))
    assert error_of(raised) == (422, "invalid_input", invalid["error"])
    assert len(bodies) == 1 and pauses == []


def test_an_error_without_the_services_json_keeps_the_text():
    handle, _ = encode_server([httpx.Response(502, text="<html>bad gateway</html>")])
    vae, _ = scripted(handle)
    with pytest.raises(VaeHTTPError) as raised:
        vae.encode(np.ones((1, 64)))
    assert error_of(raised) == (502, None, "<html>bad gateway</html>")


def test_connection_errors_are_retried_then_raised():
    handle, bodies = encode_server([httpx.ConnectError("refused")] * 2)
    vae, pauses = scripted(handle)
    assert vae.encode(np.ones((1, 64))).mu.tolist() == [[0.5]]
    assert len(bodies) == 3 and len(pauses) == 2

    handle, bodies = encode_server([httpx.ConnectError("refused")] * 10)
    vae, _ = scripted(handle, max_retries=2)
    refused = r"POST http://testserver/encode: ConnectError: refused \(after 3 attempts\)"
    with pytest.raises(VaeConnectionError, match=refused):
        vae.encode(np.ones((1, 64)))
    assert len(bodies) == 3


def test_the_api_key_header():
    seen: list[str | None] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json=CARD)

    VaeClient(BASE, transport=httpx.MockTransport(handle)).model()
    VaeClient(BASE, "k3y", transport=httpx.MockTransport(handle)).model()
    assert seen == [None, "Bearer k3y"]


# --- async ----------------------------------------------------------------------------------------------------
def test_the_async_client_equals_the_sync_client(digits_model_dir, app_client, rows):
    sync = VaeClient(BASE, http_client=app_client, max_batch=3)
    z = np.random.default_rng(1).standard_normal((5, 4))

    async def run():
        app = create_app(Settings(model_dir=digits_model_dir, runtime="onnx"))
        async with app.router.lifespan_context(app):
            async with AsyncVaeClient(BASE, transport=httpx.ASGITransport(app=app), max_batch=3) as vae:
                assert await vae.ready() is True
                assert (await vae.model())["limits"] == sync.model()["limits"]
                return (
                    await vae.encode(rows),
                    await vae.decode(z),
                    await vae.sample(rows, n_samples=2, seed=3, decode=True),
                    await vae.elbo(rows, n_samples=2, iw_samples=4, seed=8, feature_scores=True),
                )

    encoded, decoded, sampled, scored = asyncio.run(run())
    assert_same(encoded, as_dict(sync.encode(rows)))
    np.testing.assert_array_equal(decoded, sync.decode(z), strict=True)
    assert_same(sampled, as_dict(sync.sample(rows, n_samples=2, seed=3, decode=True)))
    assert_same(scored, as_dict(sync.elbo(rows, n_samples=2, iw_samples=4, seed=8, feature_scores=True)))


def test_the_async_client_retries_with_its_sleep():
    handle, bodies = encode_server([httpx.Response(503, json=NOT_READY)] * 2)
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    async def run():
        async with AsyncVaeClient(BASE, transport=httpx.MockTransport(handle), sleep=sleep) as vae:
            return await vae.encode(np.ones((1, 64)))

    assert asyncio.run(run()).mu.tolist() == [[0.5]]
    assert len(bodies) == 3 and len(pauses) == 2


# --- a real server process ------------------------------------------------------------------------------------
def test_against_vae_serve(digits_model_dir, rows):
    server, base = start_server(digits_model_dir, "--host", "127.0.0.1")
    try:
        with VaeClient(base, max_batch=3) as vae:
            assert vae.ready() is True
            assert vae.model()["runtime"] == "onnx"
            body = {"instances": rows.tolist(), "n_samples": 2, "iw_samples": 4, "feature_scores": True}
            with httpx.Client(base_url=base) as http:
                expected = native(http, "/elbo", body, chunk=3, seed=6)
            assert_same(vae.elbo(rows, n_samples=2, iw_samples=4, seed=6, feature_scores=True), expected)

        async def run():
            async with AsyncVaeClient(base, max_batch=3) as vae:
                return await vae.elbo(rows, n_samples=2, iw_samples=4, seed=6, feature_scores=True)

        assert_same(asyncio.run(run()), expected)
    finally:
        stop(server)


def test_a_server_that_is_not_there_raises_a_connection_error():
    vae = VaeClient(f"http://127.0.0.1:{free_port()}", max_retries=1, sleep=lambda s: None)
    with pytest.raises(VaeConnectionError, match=r"GET http://127\.0\.0\.1:\d+/readyz: ConnectError"):
        vae.ready()
    with pytest.raises(VaeConnectionError, match=r"ConnectError: .* \(after 2 attempts\)"):
        vae.encode(np.ones((1, 64)))


def test_the_client_imports_neither_torch_nor_the_server():
    code = (
        "import sys, vae_client.client; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'fastapi', 'onnxruntime'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ)
    assert result.stdout.strip() == "[]", result.stderr


# --- a reload in the middle of a split call -----------------------------------------------------------------
def versioned_server(versions: list[str]):
    """/v1/model and /encode answers; the i-th /encode answer names versions[i] in X-Model-Version."""
    calls = {"encode": 0, "model": 0}

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/model":
            calls["model"] += 1
            return httpx.Response(200, json=CARD)
        version = versions[calls["encode"]]
        calls["encode"] += 1
        return httpx.Response(200, json=ENCODED, headers={"x-model-version": version})

    return handle, calls


def test_a_split_call_that_straddles_a_reload_is_asked_again():
    handle, calls = versioned_server(["aaa", "bbb", "bbb", "bbb"])  # reloaded after the first chunk
    vae, _ = scripted(handle, max_batch=1)
    encoded = vae.encode(np.zeros((2, 64)))
    assert calls == {"encode": 4, "model": 2}  # the second round with the new model's card
    assert encoded.mu.tolist() == [[0.5], [0.5]]


def test_a_split_call_that_straddles_two_reloads_raises():
    handle, _ = versioned_server(["aaa", "bbb", "bbb", "ccc"])
    vae, _ = scripted(handle, max_batch=1)
    with pytest.raises(VaeModelChanged) as raised:
        vae.encode(np.zeros((2, 64)))
    assert str(raised.value) == (
        "POST /encode: the server's model changed during the call, twice (versions ['bbb', 'ccc']); "
        "its answers would mix models"
    )


# --- images and heatmaps, against a `vae serve` process ---------------------------------------------------------
@pytest.fixture(scope="module")
def served(digits_model_dir):
    """A real server with small limits (4 instances a request), so a call of 6 images is split in two."""
    process, base = start_server(digits_model_dir, env={"VAE_MAX_INSTANCES": "4"})
    yield base
    stop(process)


@pytest.fixture(scope="module")
def scans() -> tuple[Images, np.ndarray]:
    """Six 8x8 grey PNGs of digits, and the raw values the server reads from them (pixel p -> p * 16/255,
    computed as service/core/images.py does: float32 pixels)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    pixels = np.rint(load_digits().data[:6] * (255 / 16)).astype(np.uint8).reshape(6, 8, 8)
    files = []
    for i, image in enumerate(pixels):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        files.append((f"scan{i}.png", buffer.getvalue()))
    raw = (pixels.astype(np.float32) * (16 / 255.0)).astype(np.float64).reshape(6, 1, 8, 8)
    return Images(files), raw


def test_image_uploads_equal_the_same_rows(served, scans):
    images, raw = scans
    with VaeClient(served) as vae:
        for got, expected in [
            (vae.encode(images), vae.encode(raw)),
            (vae.elbo(images, n_samples=3, seed=5, fpr=0.1), vae.elbo(raw, n_samples=3, seed=5, fpr=0.1)),
            (vae.sample(images, n_samples=2, seed=9, decode=True), vae.sample(raw, n_samples=2, seed=9, decode=True)),
        ]:
            for field in fields(got):
                np.testing.assert_array_equal(getattr(got, field.name), getattr(expected, field.name), field.name)
        assert len(vae.encode(images).mu) == 6  # two requests: 4 + 2 images


def test_image_uploads_go_as_the_servers_multipart_form(scans):
    images, _ = scans
    sent = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/model":
            return httpx.Response(200, json=CARD)
        sent.append(request)
        per_input = {name: [0.5] for name in ("elbo", "reconstruction", "kl", "log_likelihood", "anomaly_score")}
        return httpx.Response(
            200,
            json=per_input
            | {"threshold": 1.0, "is_anomaly": [False], "p_value": [0.5], "n_samples": 2, "iw_samples": 1, "seed": 3},
        )

    VaeClient(BASE, transport=httpx.MockTransport(answer)).elbo(Images(images.files[:1]), seed=3, n_samples=2)
    (request,) = sent
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    body = request.read()
    assert b'Content-Disposition: form-data; name="files"; filename="scan0.png"' in body
    assert b"Content-Type: image/png" in body
    assert b'name="seed"\r\n\r\n3\r\n' in body and b'name="n_samples"\r\n\r\n2\r\n' in body
    assert b'name="threshold"' not in body  # options left out are not sent


def test_images_that_are_not_images_are_refused_before_sending(tmp_path):
    with pytest.raises(VaeInputError) as refused:
        Images([("notes.txt", b"hello, world")])
    assert str(refused.value) == "notes.txt: not a PNG or JPEG file (it starts with b'hello, w')"
    with pytest.raises(VaeInputError) as missing:
        Images.read([tmp_path / "gone.png"])
    assert str(missing.value) == f"{tmp_path / 'gone.png'}: cannot read it (No such file or directory)"


def test_a_bad_image_names_the_file(served):
    with VaeClient(served) as vae, pytest.raises(VaeHTTPError) as refused:
        vae.encode(Images([("broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)]))
    assert refused.value.status_code == 422
    assert "broken.png" in refused.value.message


def test_heatmap_scores_are_the_feature_scores_in_nats(served, scans):
    images, raw = scans
    with VaeClient(served) as vae:
        heatmap = vae.heatmap(images, n_samples=4, seed=2)
        scored = vae.elbo(raw, n_samples=4, iw_samples=1, seed=2, feature_scores=True)
    assert heatmap.scores.shape == (6, 8, 8) and heatmap.seed == 2
    np.testing.assert_array_equal(heatmap.scores, scored.feature_scores[:, 0])
    # The shares come from the decoder, the scores from the scorer graph: equal to float32 rounding.
    np.testing.assert_allclose(heatmap.scores.sum(axis=(1, 2)), -scored.reconstruction, rtol=1e-6)


def test_heatmap_png_is_the_servers_picture(served, scans):
    from PIL import Image

    images, raw = scans
    with VaeClient(served) as vae:
        png = vae.heatmap_png(Images(images.files[:3]), n_samples=4, seed=2)
        assert png == vae.heatmap_png(raw[:3], n_samples=4, seed=2)  # uploads and rows draw the same picture
        with pytest.raises(VaeInputError) as refused:
            vae.heatmap_png(images, seed=2)
    picture = Image.open(io.BytesIO(png))
    assert (picture.format, picture.mode, picture.size) == ("PNG", "RGB", (3 * 8, 8))
    assert str(refused.value) == "heatmap_png: 6 inputs; one picture takes at most 4 (max_instances)"


def test_heatmap_of_a_model_without_images_is_refused(tabular_model_dir):
    process, base = start_server(tabular_model_dir)
    try:
        with VaeClient(base) as vae, pytest.raises(VaeInputError) as refused:
            vae.heatmap(np.zeros((1, 6)))
    finally:
        stop(process)
    assert str(refused.value) == "heatmap: this model's inputs are not images (GET /v1/model has no image); use elbo"


def test_async_heatmap_and_images(served, scans):
    images, raw = scans

    async def run():
        async with AsyncVaeClient(served) as vae:
            return await vae.heatmap(images, n_samples=2, seed=1), await vae.encode(images)

    heatmap, encoded = asyncio.run(run())
    with VaeClient(served) as vae:
        np.testing.assert_array_equal(heatmap.scores, vae.heatmap(raw, n_samples=2, seed=1).scores)
        np.testing.assert_array_equal(encoded.mu, vae.encode(raw).mu)
