"""`vae train` with no flags: the choices made from the data's size, and real runs from 20 rows up."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import write_png_folder, write_tabular_csv
from training.data import Dataset
from training.plan import (
    Candidate,
    ConfigError,
    choose_capacity,
    latent_ladder,
    paired_gaps,
    patience_steps,
    plan_training,
    schedule,
)
from training.train_config import TrainConfig

VAE = str(Path(sys.executable).with_name("vae"))


def table(n: int, d: int = 6) -> Dataset:
    return Dataset(np.zeros((n, d), dtype=np.float32), None, "t.csv", "tabular")


@pytest.mark.parametrize(
    "n, n_cal, fpr",
    [(20, 5, 1 / 6), (42, 10, 1 / 11), (214, 53, 1 / 54), (600, 99, 0.01), (1000, 100, 0.01)],
)
def test_the_calibration_split_grows_and_the_rate_falls_back_for_small_data(n, n_cal, fpr):
    plan = plan_training(TrainConfig(), table(n))
    assert len(plan.cal_rows) == n_cal
    assert plan.fpr == pytest.approx(fpr, rel=1e-12)
    assert len(plan.train_rows) + len(plan.val_rows) + len(plan.cal_rows) == n
    if fpr == 0.01:
        assert plan.fpr_note is None
    else:
        assert plan.fpr_note == (
            f"false-alarm rate {fpr:.4g} instead of 0.01: the {n_cal} calibration rows support no smaller rate "
            f"(1/{n_cal + 1}); 0.01 needs 99"
        )
        assert plan.fpr_note in plan.notes


def test_an_explicit_rate_the_split_cannot_support_is_an_error():
    with pytest.raises(ConfigError) as err:
        plan_training(TrainConfig(fpr=0.01), table(214))
    assert str(err.value) == (
        "--fpr 0.01 needs at least 99 calibration rows; the calibration split has 53: "
        "raise --calibration-fraction or --fpr"
    )


def test_an_explicit_calibration_fraction_is_kept():
    plan = plan_training(TrainConfig(calibration_fraction=0.1), table(214))
    assert len(plan.cal_rows) == 21 and plan.fpr == pytest.approx(1 / 22)


def test_training_length_is_counted_in_steps():
    config = TrainConfig()
    assert schedule(config, 14) == (14, 3000, 300)  # one step per epoch
    assert schedule(config, 140) == (17, 889, 34)
    assert schedule(config, 54_000) == (128, 50, 10)
    assert schedule(TrainConfig(batch_size=10, epochs=7, patience=2), 140) == (10, 7, 2)


def test_unset_capacity_compares_a_linear_model_and_an_mlp_over_the_latent_ladder():
    plan = plan_training(TrainConfig(), table(100, d=6))
    mlp = [128] * 4
    assert [[(c.hidden, c.latent_dim, c.noise) for c in family] for family in plan.families] == [
        [([], 1, "shared"), ([], 2, "shared"), ([], 3, "shared"), ([], 4, "shared")],
        [(mlp, 1, "diagonal"), (mlp, 2, "diagonal"), (mlp, 3, "diagonal"), (mlp, 4, "diagonal")],
    ]
    assert plan.notes[1].startswith(
        "likelihood gaussian, one noise variance for all features (linear models), one noise variance per "
        "feature (non-linear models), standard scaling; "
    )
    assert [family[0].hidden for family in plan_training(TrainConfig(), table(100, d=65)).families] == [[], [256] * 4]
    # Pixels keep two hidden layers (four fitted digits worse).
    pixels = Dataset(np.zeros((50, 1, 8, 8), dtype=np.float32), None, "p.npy", "array")
    assert [family[0].hidden for family in plan_training(TrainConfig(), pixels).families] == [[], [128, 128]]
    assert latent_ladder(784) == [1, 2, 3, 4, 8, 16, 32] and latent_ladder(1) == [1]
    fixed = plan_training(TrainConfig(hidden=[16], latent_dim=3), table(100))
    assert not fixed.selects


def test_pixels_are_scaled_by_their_range_and_tables_standardised():
    pixels = Dataset(np.zeros((50, 1, 4, 4), dtype=np.float32), None, "p.npy", "array")
    assert plan_training(TrainConfig(), pixels).scaling == "range"
    assert plan_training(TrainConfig(), table(50)).scaling == "standard"


def test_the_noise_is_shared_for_linear_models_and_pixels_and_per_feature_for_mlps_of_tables():
    pixels = Dataset(np.zeros((50, 1, 4, 4), dtype=np.float32), None, "p.npy", "array")
    noises = lambda plan: [family[0].noise for family in plan.families]  # noqa: E731
    assert noises(plan_training(TrainConfig(likelihood="gaussian"), pixels)) == ["shared", "shared"]
    assert noises(plan_training(TrainConfig(), table(50))) == ["shared", "diagonal"]
    assert noises(plan_training(TrainConfig(scaling="range"), table(50))) == ["shared", "shared"]
    # An explicit --noise is every candidate's.
    assert noises(plan_training(TrainConfig(noise="feature"), table(50))) == ["feature", "feature"]
    assert (
        plan_training(TrainConfig(noise="diagonal"), table(50))
        .notes[1]
        .startswith("likelihood gaussian, one noise variance per feature, standard scaling; ")
    )


def test_too_few_rows_names_both_numbers(tmp_path):
    np.save(tmp_path / "nine.npy", np.ones((9, 3), dtype=np.float32))
    result = subprocess.run(
        [VAE, "train", "--data", str(tmp_path / "nine.npy"), "--out", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"vae train: {tmp_path / 'nine.npy'}: expected at least 10 rows, got 9"


def _train_with_no_flags(data: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [VAE, "train", "--data", str(data), "--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=900,
    )


def _wide_table(path: Path, n: int = 120, d: int = 784) -> Path:
    rng = np.random.default_rng(1)
    latent = rng.standard_normal((n, 3))
    np.save(path, (latent @ rng.standard_normal((3, d)) + 0.1 * rng.standard_normal((n, d))).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def default_runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """`vae train --data X --out DIR` with no other flag, on each data set the issue names, two at a time."""
    root = tmp_path_factory.mktemp("defaults")
    data = {f"table-{n}": write_tabular_csv(root / f"table-{n}.csv", n=n) for n in (20, 50, 214, 1000)}
    data["png-60"] = write_png_folder(root / "pngs")  # 2 classes x 30 images, 12 x 10 RGB
    data["wide-784"] = _wide_table(root / "wide.npy")
    with ThreadPoolExecutor(2) as pool:
        runs = {name: pool.submit(_train_with_no_flags, path, root / f"model-{name}") for name, path in data.items()}
        return {name: (run.result(), root / f"model-{name}") for name, run in runs.items()}


@pytest.mark.parametrize(
    "name, n_cal, fpr, hidden, latent",
    [
        ("table-20", 5, 1 / 6, [], 2),
        ("table-50", 12, 1 / 13, [], 4),
        ("table-214", 53, 1 / 54, [], 3),
        ("table-1000", 100, 0.01, [], 4),
        ("png-60", 15, 1 / 16, [256, 256], 4),
        ("wide-784", 30, 1 / 31, [], 4),
    ],
)
def test_no_flags_trains_from_20_rows_up(default_runs, name, n_cal, fpr, hidden, latent):
    result, out = default_runs[name]
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out}: best validation ELBO ")
    manifest = json.loads((out / "manifest.json").read_text())
    calibration = manifest["scoring"]["calibration"]
    assert (calibration["n"], calibration["fpr"]) == (n_cal, pytest.approx(fpr, rel=1e-12))
    assert (calibration["fpr_note"] is None) == (fpr == 0.01)
    if calibration["fpr_note"]:
        assert f"vae train: {calibration['fpr_note']}\n" in result.stderr  # said in one line
    # The estimator follows the model (L_K for the exact posterior of the linear model, the ELBO for an MLP), and
    # its draws are chosen from the data: the last rung tried is the K or L served, every rung's noise recorded.
    scoring = manifest["scoring"]
    assert scoring["estimator"] == ("elbo" if hidden else "iwae")
    draws = scoring["n_samples"] if hidden else scoring["iw_samples"]
    assert (scoring["iw_samples"] if hidden else scoring["n_samples"]) == 1
    selection = scoring["iw_selection"]
    assert selection["ladder"][-1]["k"] == draws
    assert [rung["k"] for rung in selection["ladder"]] == [2**i for i in range(len(selection["ladder"]))]
    last = selection["ladder"][-1]
    assert last["noise"] <= 0.1 * last["iqr"] or last["k"] == 256
    # The capacity chosen for the data is printed and stored.
    config = manifest["training"]["config"]
    assert (config["hidden"], config["latent_dim"], manifest["latent_dim"]) == (hidden, latent, latent)
    widths = ",".join(map(str, hidden)) or "linear"
    assert (
        f"vae train: chose hidden {widths}, latent {latent} (smallest latent within one standard error of the best "
        f"held-out L_16 of {len(manifest['training']['selection'])} tried)\n"
    ) in result.stderr
    # Every candidate's gap to the best and its standard error are stored; the one kept is within one.
    tried = manifest["training"]["selection"]
    kept = next(t for t in tried if (t["hidden"], t["latent_dim"]) == (hidden, latent))
    assert len(tried) >= 2 and kept["below_best"] <= kept["standard_error"]
    assert min(t["below_best"] for t in tried) == 0.0
    assert manifest["training"]["notes"][0].endswith(f" validation, {n_cal} calibration")
    # A chosen linear model is refitted on the training and validation rows together, and says so.
    refits = [note for note in manifest["training"]["notes"] if note.startswith("refitted linear latent ")]
    assert len(refits) == (0 if hidden else 1)
    for note in refits:
        assert f"vae train: {note}\n" in result.stderr


def test_paired_gaps_measure_each_candidate_against_the_best_on_the_same_rows():
    best, close, far = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.9, 2.1, 2.8, 4.0]), np.array([0.0, 1.0, 2.0, 3.0])
    gaps = paired_gaps([best, close, far])
    assert gaps[0] == (0.0, 0.0)
    assert gaps[1] == (pytest.approx(0.05), pytest.approx(np.sqrt(0.05 / 3) / 2))  # sd of (.1, -.1, .2, 0) / √4
    assert gaps[2] == (pytest.approx(1.0), pytest.approx(0.0))  # always 1 nat worse: no doubt at all


def test_the_one_standard_error_rule_keeps_the_smallest_latent_the_rows_cannot_tell_from_the_best():
    best, close, far = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.9, 2.1, 2.8, 4.0]), np.array([0.0, 1.0, 2.0, 3.0])
    mlp8, mlp2, linear1 = Candidate([128, 128], 8), Candidate([128, 128], 2), Candidate([], 1)
    assert choose_capacity([mlp8, mlp2, linear1], [best, close, far], "best") == 0
    assert choose_capacity([mlp8, mlp2, linear1], [best, close, far], "one-se") == 1
    # At equal latent the linear model is the simpler one.
    assert choose_capacity([mlp8, mlp2, Candidate([], 2)], [best, close, close], "one-se") == 2


def test_non_linear_models_wait_longer_before_stopping():
    plan = plan_training(TrainConfig(), table(1000))
    assert (len(plan.train_rows), plan.batch_size, plan.patience, plan.nonlinear_patience) == (800, 100, 38, 100)
    assert plan.notes[1] == (
        "likelihood gaussian, one noise variance for all features (linear models), one noise variance per feature "
        "(non-linear models), standard scaling; batch 100, up to 1000 epochs, patience 38 (100 for non-linear models)"
    )
    assert patience_steps([], selecting=True) == 200 and patience_steps([], selecting=False) == 300
    assert patience_steps([128, 128], selecting=True) == 800
    fixed = plan_training(TrainConfig(patience=5), table(1000))
    assert (fixed.patience, fixed.nonlinear_patience) == (5, 5)
