"""Images over HTTP: multipart uploads, PNG responses, heatmaps, and broken images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.http.app import create_app
from service.http.settings import Settings


@pytest.fixture(scope="module")
def png_client(conv_png_model_dir):
    with TestClient(create_app(Settings(model_dir=conv_png_model_dir))) as client:
        yield client


@pytest.fixture(scope="module")
def conv_digits_client(conv_digits_model_dir):
    with TestClient(create_app(Settings(model_dir=conv_digits_model_dir))) as client:
        yield client


def png_of(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image_files(folder, n):
    paths = sorted(folder.rglob("*.png"))[:n]
    return paths, [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]


def test_model_card_says_the_model_takes_images(png_client, clients):
    assert png_client.get("/v1/model").json()["image"] == {
        "channels": 3,
        "height": 12,
        "width": 10,
        "resize": False,
        "max_value": 255.0,
    }
    assert clients["tabular", "onnx"].get("/v1/model").json()["image"] is None


def test_multipart_upload_equals_the_json_request(png_client, png_folder):
    paths, files = image_files(png_folder, 3)
    instances = [np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1).tolist() for p in paths]
    form = {"n_samples": "4", "iw_samples": "7", "seed": "11", "feature_scores": "true"}
    uploaded = png_client.post("/elbo", files=files, data=form)
    assert uploaded.status_code == 200, uploaded.text
    sent = png_client.post(
        "/elbo", json={"instances": instances, "n_samples": 4, "iw_samples": 7, "seed": 11, "feature_scores": True}
    )
    assert uploaded.json() == sent.json()


def test_multipart_encode_and_sample(png_client, png_folder):
    _, files = image_files(png_folder, 2)
    assert np.shape(png_client.post("/encode", files=files).json()["mu"]) == (2, 4)
    body = png_client.post("/sample", files=files, data={"n_samples": "3", "seed": "1"}).json()
    assert np.shape(body["z"]) == (2, 3, 4)


def test_digit_png_maps_pixels_to_raw_units(conv_digits_client):
    digit = np.zeros((8, 8), dtype=np.uint8)
    digit[2:6, 3] = 255
    raw = (digit.astype(float) * 16 / 255).reshape(1, 1, 8, 8).tolist()
    uploaded = conv_digits_client.post("/encode", files=[("files", ("one.png", png_of(digit), "image/png"))]).json()
    sent = conv_digits_client.post("/encode", json={"instances": raw}).json()
    np.testing.assert_allclose(uploaded["mu"], sent["mu"], atol=1e-6)


def test_decode_as_png(png_client):
    response = png_client.post("/decode", json={"z": [[0.0] * 4]}, headers={"accept": "image/png"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (10, 12))


def test_decode_batch_as_a_png_grid(png_client):
    response = png_client.post("/decode", json={"z": [[0.0] * 4] * 5}, headers={"accept": "image/png"})
    assert Image.open(io.BytesIO(response.content)).size == (5 * 10, 12)


def test_sample_as_a_png_grid_of_inputs_by_draws(conv_digits_client):
    response = conv_digits_client.post(
        "/sample",
        json={"instances": [[0.0] * 64, [8.0] * 64], "n_samples": 3, "seed": 0},
        headers={"accept": "image/png"},
    )
    image = Image.open(io.BytesIO(response.content))
    assert (image.mode, image.size) == ("L", (3 * 8, 2 * 8))
    prior = conv_digits_client.post("/sample", json={"n_samples": 4}, headers={"accept": "image/png"})
    assert Image.open(io.BytesIO(prior.content)).size == (4 * 8, 8)


def test_json_stays_the_default(png_client):
    assert png_client.post("/decode", json={"z": [[0.0] * 4]}).headers["content-type"] == "application/json"


def test_heatmap(png_client, png_folder):
    _, files = image_files(png_folder, 2)
    response = png_client.post("/heatmap", files=files, data={"seed": "0"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(response.content)))
    assert image.shape == (12, 2 * 10, 3)
    assert image.std() > 5  # not blank


def test_heatmap_brightest_where_the_image_is_off(conv_digits_client):
    # A digit-shaped model sees a full white square as wrong in its corners: the heat must vary.
    response = conv_digits_client.post("/heatmap", json={"instances": [[16.0] * 64], "seed": 0})
    assert np.asarray(Image.open(io.BytesIO(response.content))).std() > 1


def error(response, status):
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_broken_image(png_client):
    files = [("files", ("broken.png", b"this is not a png", "image/png"))]
    assert error(png_client.post("/elbo", files=files), 422).startswith(
        "broken.png: cannot be decoded as a PNG or JPEG image ("
    )


def test_truncated_image(png_client, png_folder):
    data = sorted(png_folder.rglob("*.png"))[0].read_bytes()
    files = [("files", ("cut.png", data[: len(data) // 2], "image/png"))]
    assert error(png_client.post("/encode", files=files), 422).startswith(
        "cut.png: cannot be decoded as a PNG or JPEG image ("
    )


def test_wrong_size_image(png_client):
    files = [("files", ("big.png", png_of(np.zeros((20, 20, 3), dtype=np.uint8)), "image/png"))]
    assert error(png_client.post("/elbo", files=files), 422) == (
        "big.png: is 20x20 pixels; the model takes 10x12 (width x height)"
    )


def test_gif_is_refused(png_client):
    buffer = io.BytesIO()
    Image.new("RGB", (10, 12)).save(buffer, format="GIF")
    files = [("files", ("a.gif", buffer.getvalue(), "image/gif"))]
    assert error(png_client.post("/elbo", files=files), 422) == "a.gif: is a GIF image; expected PNG or JPEG"


def test_form_with_a_file_in_the_wrong_field(png_client):
    assert error(png_client.post("/elbo", data={"seed": "1"}, files=[("other", ("x", b"", "text/plain"))]), 422) == (
        "other: a file in this form field; images go in the field 'files'"
    )


def test_form_without_files(png_client):
    response = png_client.post(
        "/elbo",
        content=b'--b\r\nContent-Disposition: form-data; name="seed"\r\n\r\n1\r\n--b--\r\n',
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert error(response, 422) == "files: expected one or more PNG or JPEG files in the form field 'files'"


def test_bad_form_option(png_client, png_folder):
    _, files = image_files(png_folder, 1)
    assert error(png_client.post("/elbo", files=files, data={"n_samples": "many"}), 422) == (
        "n_samples: Input should be a valid integer (got 'many')"
    )


def test_images_for_a_tabular_model(clients):
    client = clients["tabular", "onnx"]
    files = [("files", ("a.png", png_of(np.zeros((4, 4), dtype=np.uint8)), "image/png"))]
    assert (
        error(client.post("/elbo", files=files), 422)
        == "this model takes rows shaped [6], not images; send JSON instances"
    )
    assert error(client.post("/decode", json={"z": [[0.0] * 4]}, headers={"accept": "image/png"}), 406) == (
        "this model's outputs are rows shaped [6], not images; accept application/json"
    )
