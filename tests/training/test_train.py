"""A real, short training run on digits, and the guarantees of `vae train`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import FAST
from training.export import load_checkpoint
from training.train import TrainConfig, split_indices, train
from training.train_config import default_out

VAE = str(Path(sys.executable).with_name("vae"))


def test_validation_elbo_improves_on_the_first_epoch(digits_model_dir):
    history = [json.loads(line) for line in (digits_model_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 12
    assert max(row["val_elbo"] for row in history[1:]) > history[0]["val_elbo"] + 5.0  # nats
    assert set(history[0]) == {
        "epoch",
        "train_loss",
        "train_elbo",
        "train_reconstruction",
        "train_kl",
        "train_beta",
        "val_elbo",
        "val_reconstruction",
        "val_kl",
        "active_units",
        "seconds",
    }
    for row in history:
        assert row["val_elbo"] == pytest.approx(row["val_reconstruction"] - row["val_kl"], abs=1e-3)


def test_best_weights_are_kept(digits_model_dir):
    checkpoint = load_checkpoint(digits_model_dir / "checkpoint.pt")
    history = checkpoint["history"]
    best = max(history, key=lambda row: row["val_elbo"])
    assert checkpoint["training"]["best_epoch"] == best["epoch"]
    assert checkpoint["training"]["best_val_elbo"] == best["val_elbo"]


def test_same_seed_same_weights_and_numbers(tmp_path):
    config = dict(FAST, epochs=2, data="digits")
    a = train(TrainConfig(out=str(tmp_path / "a"), seed=3, **config))
    b = train(TrainConfig(out=str(tmp_path / "b"), seed=3, **config))
    c = train(TrainConfig(out=str(tmp_path / "c"), seed=4, **config))
    sa, sb, sc = (load_checkpoint(m.dir / "checkpoint.pt")["state_dict"] for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert (a.dir / "metrics.jsonl").read_text().replace("seconds", "") != ""

    def strip(d):
        return [
            {k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (d / "metrics.jsonl").read_text().splitlines()
        ]

    assert strip(a.dir) == strip(b.dir)


def test_early_stopping_ends_training(tmp_path):
    artifact = train(TrainConfig(data="digits", out=str(tmp_path / "m"), **dict(FAST, epochs=200, patience=1, lr=0.05)))
    assert artifact.manifest.training.epochs < 200


def test_split_is_seeded_and_disjoint():
    train_rows, val_rows, cal_rows = split_indices(100, 0.2, 0.1, seed=5)
    assert (len(train_rows), len(val_rows), len(cal_rows)) == (70, 20, 10)
    assert len(set(train_rows) | set(val_rows) | set(cal_rows)) == 100
    assert split_indices(100, 0.2, 0.1, seed=5)[2].tolist() == cal_rows.tolist()


def test_help_shows_every_default():
    result = subprocess.run([VAE, "train", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for flag, default in [
        ("--data", "digits"),
        ("--latent-dim", "chosen from 1, 2, 3, 4, 8, 16, 32 by held-out L_K"),
        ("--selection-rule", "one-se"),
        (
            "--hidden",
            "a linear model and an MLP of four layers for tables, two for pixels, 128 wide up to 64 features "
            "and 256 beyond, are both fitted and the better by held-out L_K kept; 32,64 for conv",
        ),
        ("--epochs", "about 8000 gradient steps' worth, 50 to 3000"),
        ("--batch-size", "training rows / 8, within 16 to 128"),
        ("--lr", "0.003"),
        ("--beta", "1.0"),
        ("--seed", "0"),
        ("--val-fraction", "0.1"),
        ("--out", "models/ and the data's name: models/digits for digits, models/sensors for sensors.csv"),
        ("--likelihood", "bernoulli for digits, gaussian for files"),
        ("--noise", "shared for linear models and pixels, diagonal for non-linear models of standardised tables"),
        ("--scaling", "range for pixels, C x H x W, standard for tables"),
        (
            "--fpr",
            "0.01, or the smallest rate the calibration split supports when it is too small; an explicit "
            "rate it cannot support is an error",
        ),
        (
            "--score-iw-samples",
            "the smallest K in 1, 2, 4, ... 256 whose Monte Carlo noise is at most 10% of the "
            "calibration scores' interquartile range",
        ),
    ]:
        assert flag in text
        assert f"(default: {default})" in text, flag


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "nope.csv"], "vae train: nope.csv: "),
        (["--hidden", "a,b"], "argument --hidden: expected comma-separated integers like 256,128, got 'a,b'"),
        (["--val-fraction", "1.5"], "argument --val-fraction: expected a fraction strictly between 0 and 1, got '1.5'"),
    ],
)
def test_cli_errors_name_the_problem(tmp_path, args, message):
    result = subprocess.run(
        [VAE, "train", "--out", str(tmp_path / "m"), *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "m").exists()


def test_cli_trains_a_csv_with_gaussian_default_into_models_and_its_name(tmp_path, tabular_csv):
    """Without --out a file's model goes to models/ and the file's name: not over the digits model `make run` serves."""
    result = subprocess.run(
        [VAE, "train", "--data", str(tabular_csv), "--epochs", "2", "--hidden", "16", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = Path("models") / tabular_csv.stem
    assert result.stdout.startswith(f"wrote {out}: best validation ELBO ")
    manifest = json.loads((tmp_path / out / "manifest.json").read_text())
    assert (manifest["likelihood"], manifest["name"]) == ("gaussian", tabular_csv.stem)
    assert manifest["training"]["config"]["out"] == str(out)
    assert not (tmp_path / "models" / "digits").exists()


def test_the_default_model_directory_is_named_after_the_data():
    assert default_out("digits") == "models/digits"
    assert default_out("data/sensors.csv") == "models/sensors"
    assert default_out("/data/pictures/") == "models/pictures"
    assert default_out("x.npz") == "models/x"


def test_kl_warmup_ramps_beta_from_zero(tmp_path):
    from training.train import beta_at

    assert [beta_at(e, 2.0, 4) for e in (1, 2, 3, 5, 9)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    assert beta_at(1, 1.0, 0) == 1.0
    artifact = train(TrainConfig(data="digits", out=str(tmp_path / "m"), kl_warmup=2, **dict(FAST, epochs=3)))
    history = [json.loads(line) for line in (artifact.dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["train_beta"] for row in history] == [0.0, 0.5, 1.0]


def test_free_bits_keep_latent_units_active(tmp_path):
    common = dict(FAST, epochs=8, latent_dim=8, beta=4.0)  # a heavy KL weight collapses units
    plain = train(TrainConfig(data="digits", out=str(tmp_path / "plain"), **common))
    guarded = train(TrainConfig(data="digits", out=str(tmp_path / "guarded"), free_bits=2.0, **common))

    def last(a):
        return json.loads((a.dir / "metrics.jsonl").read_text().splitlines()[-1])["active_units"]

    assert last(plain) == 0 and last(guarded) >= 3  # measured: 0 and 6


def test_active_units_counts_dimensions_whose_mean_varies():
    from training.train import active_units

    mu = torch.stack([torch.linspace(-1, 1, 50), torch.full((50,), 0.3), 0.05 * torch.linspace(-1, 1, 50)], dim=1)
    assert active_units(mu) == 1


def test_fpr_needs_enough_calibration_rows(tmp_path):
    from training.train import ConfigError

    with pytest.raises(ConfigError) as err:
        train(TrainConfig(data="digits", out=str(tmp_path / "m"), fpr=0.001, **FAST))
    assert str(err.value) == (
        "--fpr 0.001 needs at least 999 calibration rows; the calibration split has 449: "
        "raise --calibration-fraction or --fpr"
    )


def test_no_refit_keeps_the_linear_model_fitted_on_the_training_rows(tmp_path, tabular_csv):
    common = ["--data", str(tabular_csv), "--hidden", "linear", "--latent-dim", "2", "--epochs", "3", "--no-progress"]
    runs = {}
    for name, extra in (("refit", []), ("kept", ["--no-refit"])):
        out = tmp_path / name
        result = subprocess.run(
            [VAE, "train", "--out", str(out), *common, *extra], capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr
        runs[name] = (result.stderr, json.loads((out / "manifest.json").read_text())["training"])
    refit_stderr, refit = runs["refit"]
    kept_stderr, kept = runs["kept"]
    note = next(n for n in refit["notes"] if n.startswith("refitted linear latent 2 on all "))
    assert f"vae train: {note}\n" in refit_stderr
    assert not any(n.startswith("refitted") for n in kept["notes"]) and "refitted" not in kept_stderr
    assert (refit["config"]["refit"], kept["config"]["refit"]) == (True, False)
    # The validated fit's record is the same either way: the refit changes the weights, not the report.
    assert (refit["best_val_elbo"], refit["best_epoch"]) == (kept["best_val_elbo"], kept["best_epoch"])
    weights = [load_checkpoint(tmp_path / name / "checkpoint.pt")["state_dict"] for name in ("refit", "kept")]
    assert not torch.equal(weights[0]["decoder.net.0.weight"], weights[1]["decoder.net.0.weight"])
