"""Shared fixtures: small real models, trained once per session and reused by every test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import FAST, write_png_folder, write_tabular_csv


def pytest_configure(config):
    config.addinivalue_line("markers", "container: builds and runs the container images (needs podman)")
    config.addinivalue_line("markers", "browser: drives the web page in a headless browser (needs chromium)")
    config.addinivalue_line("markers", "proxy: runs the server behind nginx (needs nginx)")


def pytest_collection_modifyitems(config, items):
    """Every test that takes the `browser` fixture is a browser test, so `make test-fast` can leave it out."""
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def digits_model_dir(tmp_path_factory) -> Path:
    from training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("models") / "digits"
    train(TrainConfig(data="digits", out=str(out), **FAST))
    return out


@pytest.fixture(scope="session")
def tabular_csv(tmp_path_factory) -> Path:
    return write_tabular_csv(tmp_path_factory.mktemp("data") / "tabular.csv")


@pytest.fixture(scope="session")
def tabular_model_dir(tmp_path_factory, tabular_csv) -> Path:
    from training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("models") / "tabular"
    train(TrainConfig(data=str(tabular_csv), out=str(out), **FAST))
    return out


@pytest.fixture(scope="session")
def model_dirs(digits_model_dir, tabular_model_dir) -> dict[str, Path]:
    return {"digits": digits_model_dir, "tabular": tabular_model_dir}


def _calibrated_digits(tmp_path_factory, **options):
    """A digits model trained on 1300 rows with a large calibration split, and 497 fresh normal rows."""
    from sklearn.datasets import load_digits

    from training.train import TrainConfig, train

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.data))
    x = digits.data[order].reshape(-1, 1, 8, 8).astype(np.float32)
    root = tmp_path_factory.mktemp("calibrated")
    np.save(root / "train.npy", x[:1300])
    out = root / "model"
    train(
        TrainConfig(
            data=str(root / "train.npy"),
            out=str(out),
            calibration_fraction=0.3,
            fpr=0.1,
            **options,
            **dict(FAST, epochs=25),
        )
    )
    return out, x[1300:].reshape(-1, 64).astype(np.float64)


@pytest.fixture(scope="session")
def calibration_setup(tmp_path_factory):
    return _calibrated_digits(tmp_path_factory, likelihood="bernoulli", score_iw_samples=20)


@pytest.fixture(scope="session")
def chosen_k_calibration_setup(tmp_path_factory):
    """As calibration_setup, with the defaults' likelihood (gaussian, shared noise) and K chosen from the data."""
    return _calibrated_digits(tmp_path_factory)


@pytest.fixture(scope="session")
def png_folder(tmp_path_factory) -> Path:
    return write_png_folder(tmp_path_factory.mktemp("pngs") / "images")


@pytest.fixture(scope="session")
def conv_digits_model_dir(tmp_path_factory) -> Path:
    from training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("models") / "conv-digits"
    train(TrainConfig(data="digits", out=str(out), arch="conv", **dict(FAST, hidden=[8, 16], epochs=6)))
    return out


@pytest.fixture(scope="session")
def conv_png_model_dir(tmp_path_factory, png_folder) -> Path:
    from training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("models") / "conv-png"
    train(
        TrainConfig(
            data=str(png_folder),
            out=str(out),
            arch="conv",
            fpr=0.1,
            calibration_fraction=0.2,
            **dict(FAST, hidden=[8, 16], epochs=40, batch_size=16),  # 60 images: small batches to learn anything
        )
    )
    return out
