"""Training on images: the conv architecture, image folders, and their exports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from service.core.artifact import PARITY_TOLERANCE, load_artifact
from training.data import DataError, load_dataset
from training.export import load_checkpoint, model_from_checkpoint
from training.model import VAE, ModelConfig


@pytest.mark.parametrize("shape", [[1, 8, 8], [1, 28, 28], [3, 64, 64], [3, 13, 7]])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_conv_decoder_output_matches_the_input_shape(shape, likelihood):
    model = VAE(ModelConfig(input_shape=shape, hidden=[4, 8], latent_dim=3, likelihood=likelihood, architecture="conv"))
    x = torch.rand(2, *shape)
    mu, _ = model.encode(x)
    assert all(out.shape == x.shape for out in model.decode(mu))


def test_conv_model_on_digits(conv_digits_model_dir):
    manifest = load_artifact(conv_digits_model_dir).manifest
    assert (manifest.architecture, manifest.input_shape) == ("conv", [1, 8, 8])
    assert manifest.image.model_dump() == {"channels": 1, "height": 8, "width": 8, "resize": False, "max_value": 16.0}
    history = load_checkpoint(conv_digits_model_dir / "checkpoint.pt")["history"]
    assert history[-1]["val_elbo"] > history[0]["val_elbo"]


@pytest.mark.parametrize("fixture", ["conv_digits_model_dir", "conv_png_model_dir"])
def test_conv_exports_match_the_eager_model(request, fixture):
    model_dir = request.getfixturevalue(fixture)
    artifact = load_artifact(model_dir)
    assert all(v <= PARITY_TOLERANCE for by_graph in artifact.manifest.parity.values() for v in by_graph.values())
    eager = model_from_checkpoint(load_checkpoint(model_dir / "checkpoint.pt"))
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_dir / "decoder.onnx"))
    z = torch.randn(5, eager.config.latent_dim)
    with torch.no_grad():
        expected = eager.decode(z)
    np.testing.assert_allclose(session.run(None, {"z": z.numpy()})[0], expected[0].numpy(), atol=1e-4)


def test_png_folder_model(conv_png_model_dir):
    manifest = load_artifact(conv_png_model_dir).manifest
    assert (manifest.input_shape, manifest.likelihood) == ([3, 12, 10], "bernoulli")
    assert manifest.preprocessing.model_dump() == {"offset": 0.0, "scale": 255.0}
    assert manifest.image.channels == 3 and manifest.image.max_value == 255.0


def test_image_folder_loads_with_labels_from_sub_folders(png_folder):
    data = load_dataset(str(png_folder))
    assert data.x.shape == (60, 3, 12, 10) and data.kind == "images"
    assert sorted(set(data.y.tolist())) == ["bar", "square"]
    assert data.x.max() <= 255 and data.x.min() >= 0


def test_image_folder_as_grayscale_and_resized(png_folder):
    data = load_dataset(str(png_folder), channels=1, image_size=(6, 5))
    assert data.x.shape == (60, 1, 6, 5) and data.resized


def test_images_of_different_sizes_need_image_size(tmp_path):
    for i in range(10):
        Image.new("L", (8, 8), color=i * 10).save(tmp_path / f"{i}.png")
    Image.new("L", (9, 8)).save(tmp_path / "odd.png")
    with pytest.raises(DataError) as err:
        load_dataset(str(tmp_path))
    assert str(err.value) == (
        f"{tmp_path / 'odd.png'}: is 9x8 pixels but 0.png is 8x8; images must share one size, "
        "or pass --image-size H,W to resize them"
    )
    assert load_dataset(str(tmp_path), image_size=(8, 8)).x.shape == (11, 1, 8, 8)


def test_an_unreadable_image_is_named(tmp_path):
    for i in range(10):
        Image.new("L", (8, 8)).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError) as err:
        load_dataset(str(tmp_path))
    assert str(err.value).startswith(f"{tmp_path / 'broken.png'}: cannot be read as an image (")


def test_a_folder_without_images(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError) as err:
        load_dataset(str(tmp_path))
    assert str(err.value) == f"{tmp_path}: the folder holds no PNG or JPEG images (searched recursively)"


def test_conv_refuses_flat_data(tmp_path, tabular_csv):
    from training.train import ConfigError, TrainConfig, train

    with pytest.raises(ConfigError) as err:
        train(TrainConfig(data=str(tabular_csv), out=str(tmp_path / "m"), arch="conv", progress=False))
    assert str(err.value) == f"--arch conv needs data shaped C x H x W; {tabular_csv} has rows shaped [6]"
