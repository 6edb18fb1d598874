"""`vae evaluate`: metrics through the service's own scoring code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from service.core.artifact import load_artifact
from service.core.engine import ElboOptions, VaeEngine, score_in_chunks
from service.core.runtime import OnnxRuntime
from training.data import DataError
from training.evaluate import evaluate

VAE = str(Path(sys.executable).with_name("vae"))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, calibration_setup):
    """Fresh normal digits (label 'normal') next to uniform-noise images (label 'noise') in a CSV."""
    _, fresh = calibration_setup
    noise = np.random.default_rng(0).integers(0, 17, size=(100, 64)).astype(np.float64)
    rows = np.vstack([fresh, noise])
    labels = ["normal"] * len(fresh) + ["noise"] * len(noise)
    path = tmp_path_factory.mktemp("eval") / "labelled.csv"
    with path.open("w") as f:
        f.write(",".join(f"p{i}" for i in range(64)) + ",kind\n")
        for row, label in zip(rows, labels, strict=False):
            f.write(",".join(f"{v:g}" for v in row) + f",{label}\n")
    return path, rows, np.array([0] * len(fresh) + [1] * len(noise))


def test_auroc_equals_scikit_learns_on_the_same_scores(calibration_setup, labelled):
    model_dir, _ = calibration_setup
    path, rows, labels = labelled
    report = evaluate(model_dir, str(path), label_column="kind", normal_label="normal", seed=3, progress=False)
    artifact = load_artifact(model_dir)
    engine = VaeEngine(artifact.manifest, OnnxRuntime(artifact))
    scores = -np.concatenate([s.log_likelihood for s in score_in_chunks(engine, rows, ElboOptions(seed=3))])
    assert report["auroc"] == roc_auc_score(labels, scores)
    assert report["auprc"] == average_precision_score(labels, scores)
    assert report["auroc"] > 0.95  # uniform noise is far from any digit
    assert (report["n"], report["n_normal"], report["n_anomalous"]) == (len(rows), 497, 100)
    assert report["iw_samples"] == 20


def test_report_fields_and_bits_per_dim(calibration_setup, labelled):
    model_dir, _ = calibration_setup
    path, _, _ = labelled
    report = evaluate(model_dir, str(path), label_column="kind", normal_label="normal", progress=False)
    assert report["bits_per_dim"] == pytest.approx(-report["mean_log_likelihood"] / (64 * np.log(2)))
    assert report["mean_log_likelihood"] >= report["mean_elbo"] - 0.5
    assert 0.0 <= report["false_alarm_rate"] <= 0.25 and report["detection_rate"] > 0.8


def test_cli_prints_json_and_writes_the_plot(calibration_setup, labelled, tmp_path):
    model_dir, _ = calibration_setup
    path, _, _ = labelled
    plot = tmp_path / "scores.png"
    result = subprocess.run(
        [
            VAE,
            "evaluate",
            str(model_dir),
            "--data",
            str(path),
            "--label-column",
            "kind",
            "--normal-label",
            "normal",
            "--iw-samples",
            "5",
            "--plot",
            str(plot),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["iw_samples"] == 5 and "auroc" in report
    image = np.asarray(Image.open(plot).convert("L"))
    assert image.shape == (400, 700)
    assert image.std() > 10  # not blank


def test_unknown_normal_label(calibration_setup, labelled):
    model_dir, _ = calibration_setup
    path, _, _ = labelled
    with pytest.raises(DataError) as err:
        evaluate(model_dir, str(path), label_column="kind", normal_label="cat", progress=False)
    assert str(err.value) == f"{path}: --normal-label 'cat' is not among the labels ['noise', 'normal']"


def test_data_of_the_wrong_shape(calibration_setup, tabular_csv):
    model_dir, _ = calibration_setup
    with pytest.raises(DataError) as err:
        evaluate(model_dir, str(tabular_csv), progress=False)
    assert str(err.value) == f"{tabular_csv}: rows are shaped [6]; the model takes [1, 8, 8]"


def test_cli_names_a_missing_model_directory(tmp_path):
    result = subprocess.run(
        [VAE, "evaluate", str(tmp_path / "none"), "--data", "digits"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"vae evaluate: model directory {tmp_path / 'none'} does not exist"
