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


# --- Parquet tables: feature names kept in the manifest and used to pick the columns ----------------------

FEATURES = ["a", "b", "c", "d", "e", "constant"]  # tests/helpers.py write_tabular_csv's header


def write_table(path: Path, rows: np.ndarray, names: list[str], kinds: list[str]) -> Path:
    """A Parquet file of two row groups: a text id, the label `kind`, and the features in the order given."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"id": [f"r{i}" for i in range(len(rows))], "kind": kinds}
    columns |= {name: rows[:, FEATURES.index(name)] for name in names}
    pq.write_table(pa.table(columns), path, row_group_size=len(rows) // 2 + 1)
    return path


@pytest.fixture(scope="module")
def parquet_model(tmp_path_factory, tabular_csv):
    """A model trained on a Parquet table (a text id and a label column besides the features), and its rows."""
    from tests.helpers import FAST
    from training.train import TrainConfig, train

    rows = np.loadtxt(tabular_csv, delimiter=",", skiprows=1)
    root = tmp_path_factory.mktemp("parquet")
    data = write_table(root / "train.parquet", rows, FEATURES, ["normal"] * len(rows))
    out = root / "model"
    train(TrainConfig(data=str(data), out=str(out), label_column="kind", **FAST))
    return out, rows


def test_training_keeps_the_feature_names_in_the_manifest(parquet_model):
    model_dir, _ = parquet_model
    manifest = load_artifact(model_dir).manifest
    assert manifest.feature_names == FEATURES
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.http.settings import Settings

    with TestClient(create_app(Settings(model_dir=model_dir))) as client:
        assert client.get("/v1/model").json()["feature_names"] == FEATURES


def test_a_manifest_without_feature_names_still_loads(parquet_model, tmp_path):
    import shutil

    model_dir = shutil.copytree(parquet_model[0], tmp_path / "old")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    del manifest["feature_names"]
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    assert load_artifact(model_dir).manifest.feature_names is None


def test_evaluate_picks_the_models_columns_by_name(parquet_model, tmp_path):
    model_dir, rows = parquet_model
    kinds = ["normal"] * 150 + ["odd"] * 50
    rows = rows[:200].copy()
    rows[150:] *= 3.0
    shuffled = write_table(tmp_path / "shuffled.parquet", rows, FEATURES[::-1], kinds)
    report = evaluate(model_dir, str(shuffled), label_column="kind", normal_label="normal", seed=2, progress=False)
    artifact = load_artifact(model_dir)
    engine = VaeEngine(artifact.manifest, OnnxRuntime(artifact))
    as_loaded = rows.astype(np.float32).astype(np.float64)  # load_dataset keeps float32, as training does
    scored = list(score_in_chunks(engine, as_loaded, ElboOptions(seed=2)))
    assert report["mean_elbo"] == np.concatenate([s.elbo for s in scored]).mean()
    assert (report["n"], report["n_normal"], report["n_anomalous"]) == (200, 150, 50)


def test_evaluate_refuses_columns_in_another_order(parquet_model, tmp_path):
    model_dir, rows = parquet_model
    path = write_table(tmp_path / "t.parquet", rows[:20], FEATURES, ["normal"] * 20)
    swapped = ["b", "a", "c", "d", "e", "constant"]
    with pytest.raises(DataError) as err:
        evaluate(model_dir, str(path), columns=swapped, progress=False)
    assert str(err.value) == f"{path}: the columns {swapped} are not the model's features {FEATURES}, in that order"


def test_cli_evaluates_a_parquet_file(parquet_model, tmp_path, capsys):
    from vae_cli.main import main

    model_dir, rows = parquet_model
    path = write_table(tmp_path / "t.parquet", rows[:40], FEATURES, ["normal"] * 40)
    argv = ["evaluate", str(model_dir), "--data", str(path), "--label-column", "kind", "--no-progress"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 40
    assert main([*argv, "--columns", "a,b,missing,d,e,constant"]) == 2
    assert capsys.readouterr().err == (
        f"vae evaluate: {path}: column 'missing' not found; the columns are "
        "['id', 'kind', 'a', 'b', 'c', 'd', 'e', 'constant']\n"
    )
