"""The model directory: parity of both formats, self-description, checkpoints, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.core.artifact import PARITY_TOLERANCE, load_artifact, sha256_file
from training import export
from training.export import (
    SCORER_PARITY_TOLERANCE,
    ExportError,
    export_model_dir,
    load_checkpoint,
    model_from_checkpoint,
)

EXPECTED_FILES = {
    "checkpoint.pt",
    "decoder.onnx",
    "decoder.pt",
    "elbo.onnx",
    "elbo.pt",
    "encoder.onnx",
    "encoder.pt",
    "manifest.json",
    "metrics.jsonl",
    "scorer.onnx",
    "scorer.pt",
    "validation_sample.npz",
}


@pytest.mark.parametrize("model", ["digits", "tabular"])
def test_directory_holds_every_file_with_its_sha256(model_dirs, model):
    model_dir = model_dirs[model]
    assert {p.name for p in model_dir.iterdir() if p.is_file()} == EXPECTED_FILES
    assert (model_dir / "report" / "index.html").is_file()  # pictures: outside the verified files
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["files"] == {
        name: sha256_file(model_dir / name) for name in sorted(EXPECTED_FILES - {"manifest.json"})
    }


def test_manifest_describes_the_digits_model(digits_model_dir):
    m = load_artifact(digits_model_dir).manifest
    assert (m.input_shape, m.latent_dim, m.likelihood) == ([1, 8, 8], 4, "bernoulli")
    assert m.preprocessing.model_dump() == {"offset": 0.0, "scale": 16.0}
    assert m.graphs.encoder.model_dump() == {
        "onnx": "encoder.onnx",
        "torchscript": "encoder.pt",
        "inputs": ["x"],
        "outputs": ["mu", "logvar"],
    }
    assert m.graphs.decoder.outputs == ["logits"]
    assert m.graphs.scorer.model_dump() == {
        "onnx": "scorer.onnx",
        "torchscript": "scorer.pt",
        "inputs": ["x", "z"],
        "outputs": ["log_px"],
    }
    assert m.graphs.elbo.model_dump() == {
        "onnx": "elbo.onnx",
        "torchscript": "elbo.pt",
        "inputs": ["x", "eps"],
        "outputs": ["log_px", "log_ratio", "kl"],
    }
    assert m.training.data_source == "digits" and m.training.seed == 0 and m.training.epochs == 12
    assert m.training.config["hidden"] == [64, 32]


def test_manifest_describes_the_tabular_model(tabular_model_dir, tabular_csv):
    m = load_artifact(tabular_model_dir).manifest
    assert (m.input_shape, m.likelihood) == ([6], "gaussian")
    assert m.graphs.decoder.outputs == ["mean", "logvar"]
    assert m.preprocessing.scale[5] == 1.0  # the constant column: scale 1, not a division by zero
    assert m.preprocessing.offset[5] == pytest.approx(4.0)
    assert m.training.data_source == str(tabular_csv)


@pytest.mark.parametrize("model", ["digits", "tabular"])
def test_recorded_parity_is_within_tolerance(model_dirs, model):
    parity = load_artifact(model_dirs[model]).manifest.parity
    assert set(parity) == {"onnx", "torchscript"}
    for by_graph in parity.values():
        assert set(by_graph) == {"encoder", "decoder", "scorer", "elbo"}
        assert 0.0 <= by_graph["encoder"] <= PARITY_TOLERANCE and 0.0 <= by_graph["decoder"] <= PARITY_TOLERANCE
        assert (
            0.0 <= by_graph["scorer"] <= SCORER_PARITY_TOLERANCE and 0.0 <= by_graph["elbo"] <= SCORER_PARITY_TOLERANCE
        )


@pytest.mark.parametrize("model", ["digits", "tabular"])
def test_both_formats_match_the_eager_model_at_any_batch_size(model_dirs, model):
    model_dir = model_dirs[model]
    eager = model_from_checkpoint(load_checkpoint(model_dir / "checkpoint.pt"))
    encoder_ts = torch.jit.load(str(model_dir / "encoder.pt"))
    decoder_ts = torch.jit.load(str(model_dir / "decoder.pt"))
    encoder_onnx = ort.InferenceSession(str(model_dir / "encoder.onnx"))
    decoder_onnx = ort.InferenceSession(str(model_dir / "decoder.onnx"))
    for batch in (1, 7, 300):
        x = torch.rand(batch, *eager.config.input_shape)
        z = torch.randn(batch, eager.config.latent_dim)
        with torch.no_grad():
            for expected, ts, ox in [
                (eager.encode(x), encoder_ts(x), encoder_onnx.run(None, {"x": x.numpy()})),
                (eager.decode(z), decoder_ts(z), decoder_onnx.run(None, {"z": z.numpy()})),
            ]:
                for e, t, o in zip(expected, ts, ox, strict=False):
                    torch.testing.assert_close(t, e, rtol=0, atol=1e-5)
                    np.testing.assert_allclose(o, e.numpy(), rtol=0, atol=1e-4)


def test_checkpoint_loads_with_weights_only(digits_model_dir):
    checkpoint = torch.load(digits_model_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["model_config"]["input_shape"] == [1, 8, 8]
    assert checkpoint["training"]["seed"] == 0
    assert len(checkpoint["history"]) == 12


def test_export_from_checkpoint_rebuilds_the_same_graphs(digits_model_dir, tmp_path):
    checkpoint = load_checkpoint(digits_model_dir / "checkpoint.pt")
    artifact = export_model_dir(checkpoint, tmp_path / "again")
    again = model_from_checkpoint(load_checkpoint(artifact.dir / "checkpoint.pt"))
    original = model_from_checkpoint(checkpoint)
    for key, value in original.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert artifact.manifest.training == load_artifact(digits_model_dir).manifest.training
    assert (artifact.dir / "metrics.jsonl").read_text() == (digits_model_dir / "metrics.jsonl").read_text()


def test_a_crash_mid_export_leaves_the_old_directory_intact(digits_model_dir, tmp_path, monkeypatch):
    checkpoint = load_checkpoint(digits_model_dir / "checkpoint.pt")
    out = tmp_path / "model"
    export_model_dir(checkpoint, out)
    before = {p.name: sha256_file(p) for p in out.iterdir()}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-export")

    monkeypatch.setattr(export, "_export_torchscript", crash)
    with pytest.raises(KeyboardInterrupt):
        export_model_dir(checkpoint, out)
    assert {p.name: sha256_file(p) for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no half-written sibling left behind


def test_a_crash_on_a_new_directory_leaves_nothing_that_looks_complete(digits_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "_export_torchscript", lambda *a: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError):
        export_model_dir(load_checkpoint(digits_model_dir / "checkpoint.pt"), tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_export_fails_loudly_when_parity_is_broken(digits_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "_max_abs_diff", lambda expected, actual: 0.5)
    with pytest.raises(ExportError) as err:
        export_model_dir(load_checkpoint(digits_model_dir / "checkpoint.pt"), tmp_path / "model")
    assert str(err.value).startswith("exported graphs differ from the eager model by 0.5 > 0.0001: ")
    assert not (tmp_path / "model").exists()


def test_export_fails_loudly_when_the_scorer_graph_drifts_from_the_reference(digits_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "scorer_parity", lambda reference, exported, scale=1.0: 0.25)
    with pytest.raises(ExportError) as err:
        export_model_dir(load_checkpoint(digits_model_dir / "checkpoint.pt"), tmp_path / "model")
    assert str(err.value).startswith(
        "the exported scorer graph differs from the numpy reference by 0.25 (relative) > 1e-05: "
    )
    assert not (tmp_path / "model").exists()


def test_export_fails_loudly_when_the_elbo_graph_drifts_from_the_reference(digits_model_dir, tmp_path, monkeypatch):
    # The ELBO graph's KL is (B,); the scorer's ln p(x|z) is (B, K): only the former drifts here.
    monkeypatch.setattr(
        export, "scorer_parity", lambda reference, exported, scale=1.0: 0.25 if reference.ndim == 1 else 0.0
    )
    with pytest.raises(ExportError) as err:
        export_model_dir(load_checkpoint(digits_model_dir / "checkpoint.pt"), tmp_path / "model")
    assert str(err.value).startswith(
        "the exported ELBO graph differs from the numpy reference by 0.25 (relative) > 1e-05: "
    )
    assert not (tmp_path / "model").exists()


def test_export_refuses_to_replace_a_directory_that_is_not_a_model(digits_model_dir, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError) as err:
        export_model_dir(load_checkpoint(digits_model_dir / "checkpoint.pt"), out)
    assert str(err.value) == f"{out}: exists and is not a model directory; refusing to replace it"
    assert (out / "notes.txt").read_text() == "keep me"


def test_load_checkpoint_names_the_bad_file(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError) as err:
        load_checkpoint(bad)
    assert str(err.value).startswith(f"{bad}: not a readable checkpoint (")
    with pytest.raises(ExportError) as err:
        load_checkpoint(tmp_path / "missing.pt")
    assert str(err.value) == f"{tmp_path / 'missing.pt'}: checkpoint not found"


@pytest.mark.parametrize(
    "architecture, hidden, likelihood, noise",
    [
        ("mlp", [], "gaussian", "shared"),  # probabilistic PCA's form
        ("mlp", [], "bernoulli", "feature"),
        ("mlp", [8], "gaussian", "feature"),
        ("conv", [4], "gaussian", "shared"),
        ("mlp", [8], "gaussian", "diagonal"),  # the default MLP of a standardised table
    ],
)
def test_every_model_form_exports_with_parity_and_chosen_draws(tmp_path, architecture, hidden, likelihood, noise):
    from service.core.artifact import Preprocessing, TrainingSummary
    from training.model import VAE, ModelConfig

    torch.manual_seed(0)
    shape = [1, 5, 4]
    model = VAE(
        ModelConfig(
            input_shape=shape,
            latent_dim=2,
            hidden=hidden,
            likelihood=likelihood,
            architecture=architecture,
            noise=noise,
        )
    ).eval()
    summary = TrainingSummary(data_source="test", seed=0, epochs=0, best_epoch=0, best_val_elbo=0.0, config={})
    checkpoint = export.make_checkpoint(model, Preprocessing(offset=0.0, scale=1.0), summary, [])
    x = np.random.default_rng(0).random((40, *shape)).astype(np.float32)
    plan = export.CalibrationPlan(x_raw=x, iw_samples=None, fpr=0.2, seed=0)
    artifact = export_model_dir(checkpoint, tmp_path / "m", plan)
    for by_graph in artifact.manifest.parity.values():
        assert max(by_graph["encoder"], by_graph["decoder"]) <= PARITY_TOLERANCE
        assert max(by_graph["scorer"], by_graph["elbo"]) <= SCORER_PARITY_TOLERANCE
    selection, scoring = artifact.manifest.scoring.iw_selection, artifact.manifest.scoring
    assert selection.rows == 40 and selection.repeats == 4 and selection.tolerance == 0.1
    # Only probabilistic PCA's form has an exact posterior, and is scored by L_K; every other form by its ELBO.
    exact = (architecture, hidden, likelihood, noise) == ("mlp", [], "gaussian", "shared")
    assert scoring.estimator == ("iwae" if exact else "elbo")
    assert (scoring.iw_samples, scoring.n_samples) == (
        (selection.ladder[-1].k, 1) if exact else (1, selection.ladder[-1].k)
    )
    chosen = selection.ladder[-1]
    assert chosen.noise <= 0.1 * chosen.iqr or chosen.k == 256
    assert all(rung.noise > 0.1 * rung.iqr for rung in selection.ladder[:-1])  # the smallest K that is quiet enough


def test_the_noise_ladder_stops_at_the_first_rung_whose_noise_is_a_tenth_of_the_spread():
    # Rows spread evenly over [0, 4) (interquartile range 2) plus Monte Carlo noise of sd 1/sqrt(draws): the
    # noise is 0.25 at 16 draws (0.13 of the spread: too noisy) and 0.18 at 32 (0.09: quiet enough). Seeded, so
    # the measured ratios are exact.
    spread = np.linspace(0.0, 4.0, 200, endpoint=False)

    def scores(rows: np.ndarray, seed: int, draws: int) -> np.ndarray:
        return spread[: len(rows)] + np.random.default_rng(seed).standard_normal(len(rows)) / np.sqrt(draws)

    selection = export.noise_ladder(scores, np.zeros((200, 3)), seed=0)
    assert [rung.k for rung in selection.ladder] == [1, 2, 4, 8, 16, 32]
    assert [round(rung.noise / rung.iqr, 2) for rung in selection.ladder] == [0.51, 0.37, 0.26, 0.19, 0.13, 0.09]
    assert (selection.rows, selection.repeats, selection.tolerance) == (200, 4, 0.1)
