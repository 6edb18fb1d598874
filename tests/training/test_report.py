"""The pictures `vae train` and `vae report` write into DIR/report/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.core.artifact import load_artifact
from training.report import PICTURES, tiled

VAE = str(Path(sys.executable).with_name("vae"))
SIZES = {
    "curves.png": (1200, 360),
    "reconstructions.png": (1200, 300),
    "samples.png": (800, 420),
    "latents.png": (600, 500),
    "calibration.png": (700, 400),
}


@pytest.mark.parametrize("fixture", ["digits_model_dir", "tabular_model_dir", "conv_png_model_dir"])
def test_training_writes_every_picture(request, fixture):
    report = request.getfixturevalue(fixture) / "report"
    for name in PICTURES:
        image = Image.open(report / name)
        assert image.size == SIZES[name], name
        pixels = np.asarray(image.convert("L"), dtype=float)
        assert pixels.std() > 5, f"{name} is blank"
        assert len(np.unique(pixels)) > 20, f"{name} has almost no content"


def test_html_page_shows_the_pictures_the_manifest_and_the_metrics(digits_model_dir):
    page = (digits_model_dir / "report" / "index.html").read_text()
    for name in PICTURES:
        assert f'<img src="{name}"' in page
    assert "best validation ELBO" in page and "&quot;format_version&quot;: 1" in page
    assert page.count("<tr><td>") == 12  # one row per epoch


def test_vae_report_writes_them_again(digits_model_dir, tmp_path):
    import shutil

    copy = Path(shutil.copytree(digits_model_dir, tmp_path / "copy"))
    shutil.rmtree(copy / "report")
    result = subprocess.run([VAE, "report", str(copy)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {copy / 'report' / 'index.html'}"
    assert sorted(p.name for p in (copy / "report").iterdir()) == sorted([*PICTURES, "index.html"])


def test_vae_report_names_a_bad_directory(tmp_path):
    result = subprocess.run([VAE, "report", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"vae report: {tmp_path / 'manifest.json'} is missing")


def test_tiles_have_transparent_gaps_between_them():
    tiles = np.stack([np.full((3, 2, 3), v) for v in (0.1, 0.2, 0.3, 0.4)])  # four 3 x 2 images
    picture = tiled(tiles, rows=2, gap=1)
    assert picture.shape == (7, 5, 4)
    assert picture[3, :, 3].tolist() == [0.0] * 5  # the row between the two rows of images
    assert picture[:, 2, 3].tolist() == [0.0] * 7  # the column between the two columns
    assert picture[:3, :2, :3].tolist() == np.full((3, 2, 3), 0.1).tolist()
    assert picture[4:, 3:, :3].tolist() == np.full((3, 2, 3), 0.4).tolist()
    assert picture[4:, 3:, 3].tolist() == np.ones((3, 2)).tolist()


def test_the_reconstruction_grid_labels_its_rows(digits_model_dir):
    from training.report import _image_grid, _pyplot

    artifact = load_artifact(digits_model_dir)
    plt = _pyplot()
    fig, ax = plt.subplots()
    try:
        _image_grid(ax, np.zeros((6, 64)), artifact, rows=2, row_labels=["input", "reconstruction"])
        assert [label.get_text() for label in ax.get_yticklabels()] == ["input", "reconstruction"]
        assert ax.get_yticks().tolist() == [3.5, 12.5]  # the middle of each row of 8-pixel images, 1 pixel apart
        assert ax.get_xticks().tolist() == []
        drawn = ax.get_images()[0].get_array()
        assert drawn.shape == (17, 26, 4)  # 2 x 3 images of 8 x 8 with a pixel between
        assert drawn[8, :, 3].tolist() == [0.0] * 26
    finally:
        plt.close(fig)
