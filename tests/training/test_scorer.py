"""The scorer and ELBO graphs: pinned to the numpy reference for every model form and runtime, used by the engine
when the model has them, and older model directories without them still score the same."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from service.core import scoring
from service.core.artifact import Preprocessing, TrainingSummary, load_artifact
from service.core.engine import ElboOptions, VaeEngine, scoring_path
from service.core.errors import InvalidInput
from service.core.runtime import OnnxRuntime, TorchScriptRuntime, load_runtime
from training import export
from training.model import VAE, ModelConfig

FORMS = {
    "mlp-bernoulli": dict(architecture="mlp", hidden=[16, 8], likelihood="bernoulli", noise="feature"),
    "conv-bernoulli": dict(architecture="conv", hidden=[4, 8], likelihood="bernoulli", noise="feature"),
    "mlp-gaussian-feature": dict(architecture="mlp", hidden=[16], likelihood="gaussian", noise="feature"),
    "mlp-gaussian-shared": dict(architecture="mlp", hidden=[], likelihood="gaussian", noise="shared"),
    "conv-gaussian-feature": dict(architecture="conv", hidden=[4], likelihood="gaussian", noise="feature"),
    "conv-gaussian-shared": dict(architecture="conv", hidden=[4, 4], likelihood="gaussian", noise="shared"),
    "mlp-gaussian-diagonal": dict(architecture="mlp", hidden=[16], likelihood="gaussian", noise="diagonal"),
    "conv-gaussian-diagonal": dict(architecture="conv", hidden=[4], likelihood="gaussian", noise="diagonal"),
}
SHAPE = [2, 5, 3]  # odd sizes, two channels: the conv decoder's output padding and the flattening both matter
RUNTIMES = {"onnx": OnnxRuntime, "torchscript": TorchScriptRuntime}


@pytest.fixture(scope="module")
def form_dirs(tmp_path_factory):
    """A model directory per form, with random weights and a small calibration (K = 1)."""
    dirs = {}
    for name, form in FORMS.items():
        torch.manual_seed(0)
        model = VAE(ModelConfig(input_shape=SHAPE, latent_dim=3, **form)).eval()
        constant = getattr(model.decoder, "constant_logvar", None)
        if constant is not None:  # learned variances start at 1; different ones show a feature read out of place
            with torch.no_grad():
                constant.value.uniform_(-2.0, 1.0)
        summary = TrainingSummary(data_source="test", seed=0, epochs=0, best_epoch=0, best_val_elbo=0.0, config={})
        checkpoint = export.make_checkpoint(model, Preprocessing(offset=0.0, scale=2.0), summary, [])
        x = np.random.default_rng(0).random((20, *SHAPE)).astype(np.float32)
        plan = export.CalibrationPlan(x_raw=x, iw_samples=1, fpr=0.2, seed=0)
        dirs[name] = export.export_model_dir(checkpoint, tmp_path_factory.mktemp("forms") / name, plan).dir
    return dirs


def random_inputs(likelihood: str, batch: int, draws: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x (B, *SHAPE) in model space and z (B, K, 3) wider than the prior."""
    rng = np.random.default_rng(seed)
    x = rng.random((batch, *SHAPE)) if likelihood == "bernoulli" else 1.5 * rng.standard_normal((batch, *SHAPE))
    return x.astype(np.float32), (2.0 * rng.standard_normal((batch, draws, 3))).astype(np.float32)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("batch, draws", [(1, 1), (7, 3), (2, 40)])
def test_the_scorer_graph_matches_the_numpy_reference(form_dirs, form, runtime, batch, draws):
    artifact = load_artifact(form_dirs[form])
    run = RUNTIMES[runtime](artifact)
    likelihood = artifact.manifest.likelihood
    x, z = random_inputs(likelihood, batch, draws, seed=batch * 100 + draws)
    log_px = run.score(x, z)
    assert log_px.shape == (batch, draws) and log_px.dtype == np.float64
    # The reference: the same runtime's decoder graph, then scoring.log_prob_per_feature in float64 numpy.
    params = tuple(p.reshape(batch * draws, -1) for p in run.decode(z.reshape(batch * draws, 3)))
    x_rows = np.repeat(x.reshape(batch, -1).astype(np.float64), draws, axis=0)
    reference = scoring.log_prob_per_feature(x_rows, params, likelihood).sum(axis=1).reshape(batch, draws)
    np.testing.assert_allclose(log_px, reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("form", FORMS)
def test_the_manifest_describes_the_scorer_and_elbo_graphs_and_records_their_parity(form_dirs, form):
    manifest = load_artifact(form_dirs[form]).manifest
    assert manifest.graphs.scorer.model_dump() == {
        "onnx": "scorer.onnx",
        "torchscript": "scorer.pt",
        "inputs": ["x", "z"],
        "outputs": ["log_px"],
    }
    assert manifest.graphs.elbo.model_dump() == {
        "onnx": "elbo.onnx",
        "torchscript": "elbo.pt",
        "inputs": ["x", "eps"],
        "outputs": ["log_px", "log_ratio", "kl"],
    }
    for graph in ("scorer", "elbo"):
        assert all(0.0 <= manifest.parity[runtime][graph] <= export.SCORER_PARITY_TOLERANCE for runtime in RUNTIMES)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("batch, draws", [(1, 2), (7, 7), (2, 40)])
def test_the_elbo_graph_matches_the_numpy_reference(form_dirs, form, runtime, batch, draws):
    """Against the same runtime's encoder and scorer graphs and the numpy reference, each output within 1e-6 of
    its scale (export.scorer_parity)."""
    artifact = load_artifact(form_dirs[form])
    run = RUNTIMES[runtime](artifact)
    x, _ = random_inputs(artifact.manifest.likelihood, batch, 1, seed=batch)
    eps = np.random.default_rng(batch).standard_normal((batch, draws, 3), dtype=np.float32)
    got = run.elbo_terms(x, eps)
    assert [(t.shape, t.dtype) for t in got] == [((batch, draws), np.float64)] * 2 + [((batch,), np.float64)]
    reference, scales = export.reference_elbo_terms(*run.encode(x), eps, lambda z: run.score(x, z))
    for name, g, want, scale in zip(export.ELBO_OUTPUTS, got, reference, scales, strict=True):
        assert export.scorer_parity(want, g, scale) <= 1e-6, name


def test_a_request_takes_the_elbo_graph_while_a_rows_draws_fit_in_one_call(form_dirs):
    run = load_runtime(load_artifact(form_dirs["mlp-bernoulli"]), "onnx")
    assert scoring_path(run, 1 + 1) == scoring_path(run, scoring.DECODE_CHUNK_ROWS) == "elbo"
    assert scoring_path(run, scoring.DECODE_CHUNK_ROWS + 1) == "scorer"
    run.has_scorer = run.has_elbo = False
    assert scoring_path(run, 2) == "decoder"


def test_rows_go_to_the_elbo_graph_whole_in_bounded_chunks_with_a_check_before_each():
    calls, checks = [], []

    def elbo_terms(x, eps):
        calls.append(eps.shape[:2])
        return eps[:, :, 0] + x, eps[:, :, 1] * 2.0, x[:, 0] * 3.0

    x = np.arange(5, dtype=np.float64).reshape(5, 1)
    eps = np.random.default_rng(0).standard_normal((5, 7, 2))
    for chunk_rows, shapes in [(100, [(5, 7)]), (14, [(2, 7), (2, 7), (1, 7)]), (3, [(1, 7)] * 5)]:
        calls.clear(), checks.clear()
        got = scoring.elbo_terms_in_chunks(x, eps, elbo_terms, chunk_rows=chunk_rows, check=lambda: checks.append(1))
        for g, want in zip(got, elbo_terms(x, eps), strict=True):
            np.testing.assert_array_equal(g, want)
        assert calls[: len(shapes)] == shapes and len(checks) == len(shapes)


@pytest.mark.parametrize("other", ["scorer", "decoder"])
@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("form", FORMS)
def test_the_engine_gives_the_other_paths_numbers_to_float32_rounding(form_dirs, form, runtime, other):
    """The ELBO graph's path against the encoder and the scorer graph, and against the decoder and numpy."""
    artifact = load_artifact(form_dirs[form])
    with_elbo = VaeEngine(artifact.manifest, load_runtime(artifact, runtime))
    assert with_elbo.runtime.has_elbo and with_elbo.runtime.has_scorer
    other_runtime = load_runtime(artifact, runtime)
    other_runtime.has_elbo, other_runtime.has_scorer = False, other == "scorer"
    without = VaeEngine(artifact.manifest, other_runtime)
    x_raw, _ = random_inputs("bernoulli", 9, 1, seed=3)  # in [0, 1]: inside every model's data range
    options = ElboOptions(n_samples=3, seed=11, iw_samples=50)
    a, b = with_elbo.elbo(x_raw.reshape(9, -1), options), without.elbo(x_raw.reshape(9, -1), options)
    for field in ("elbo", "reconstruction", "kl", "log_likelihood"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-6, atol=1e-5, err_msg=field)
    np.testing.assert_array_equal(a.decisions.is_anomaly, b.decisions.is_anomaly)


def test_the_same_seed_gives_the_same_numbers_alone_or_batched(form_dirs):
    artifact = load_artifact(form_dirs["conv-gaussian-feature"])
    engine = VaeEngine(artifact.manifest, OnnxRuntime(artifact))
    rows = np.random.default_rng(5).random((6, 30))
    first = engine.prepare_elbo(rows[:4], ElboOptions(seed=1, n_samples=2, iw_samples=3))
    second = engine.prepare_elbo(rows[4:], ElboOptions(seed=2, n_samples=1, iw_samples=4))  # same L + K: one call
    third = engine.prepare_elbo(rows[:2], ElboOptions(seed=3, iw_samples=9))
    batched = engine.elbo_batch([first, second, third])
    for request, together in zip([first, second, third], batched, strict=True):
        (alone,) = engine.elbo_batch([request])
        for field in ("elbo", "reconstruction", "kl", "log_likelihood"):
            np.testing.assert_array_equal(getattr(together, field), getattr(alone, field), err_msg=field)


@pytest.mark.parametrize("form", ["mlp-gaussian-feature", "mlp-bernoulli"])
def test_asking_for_feature_scores_changes_no_score(form_dirs, form):
    """The scores come from the scorer either way (the same seed, the same numbers, bit for bit); the per-feature
    shares come from the decoder and sum to -reconstruction to float32 rounding."""
    artifact = load_artifact(form_dirs[form])
    engine = VaeEngine(artifact.manifest, OnnxRuntime(artifact))
    rows = artifact.manifest.preprocessing.to_raw(np.random.default_rng(6).random((5, 30)))
    with_features = engine.elbo(rows, ElboOptions(seed=4, n_samples=3, iw_samples=5, feature_scores=True))
    plain = engine.elbo(rows, ElboOptions(seed=4, n_samples=3, iw_samples=5))
    for field in ("elbo", "reconstruction", "kl", "log_likelihood"):
        np.testing.assert_array_equal(getattr(with_features, field), getattr(plain, field), err_msg=field)
    np.testing.assert_allclose(
        with_features.feature_scores.reshape(5, -1).sum(axis=1), -with_features.reconstruction, rtol=1e-6
    )


def without_graphs(model_dir, copy_to, graphs=("scorer", "elbo")):
    """A copy of a model directory as exported before these graphs existed (by default, the scorer and the ELBO
    graph: a directory from before the scorer graph)."""
    shutil.copytree(model_dir, copy_to)
    manifest = json.loads((copy_to / "manifest.json").read_text())
    for graph in graphs:
        del manifest["graphs"][graph]
        for name in (f"{graph}.onnx", f"{graph}.pt"):
            del manifest["files"][name]
            (copy_to / name).unlink()
        for by_graph in manifest["parity"].values():
            del by_graph[graph]
    (copy_to / "manifest.json").write_text(json.dumps(manifest))
    return copy_to


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("missing", [("scorer", "elbo"), ("elbo",)])
def test_a_model_directory_without_the_newer_graphs_still_loads_and_scores(form_dirs, tmp_path, runtime, missing):
    """A directory from before the scorer graph (neither graph), or from before the ELBO graph (the scorer only)."""
    old = without_graphs(form_dirs["conv-bernoulli"], tmp_path / "old", missing)
    artifact = load_artifact(old)
    assert artifact.manifest.graphs.elbo is None and (artifact.manifest.graphs.scorer is None) == ("scorer" in missing)
    run = load_runtime(artifact, runtime)
    assert (run.has_elbo, run.has_scorer) == (False, "scorer" not in missing)
    with pytest.raises(RuntimeError, match="^this model directory has no ELBO graph$"):
        run.elbo_terms(np.zeros((1, *SHAPE), np.float32), np.zeros((1, 2, 3), np.float32))
    if "scorer" in missing:
        with pytest.raises(RuntimeError, match="^this model directory has no scorer graph$"):
            run.score(np.zeros((1, *SHAPE), np.float32), np.zeros((1, 1, 3), np.float32))
    rows = np.random.default_rng(7).random((4, 30))
    options = ElboOptions(seed=8, n_samples=2, iw_samples=6)
    old_scores = VaeEngine(artifact.manifest, run).elbo(rows, options)
    new = load_artifact(form_dirs["conv-bernoulli"])
    new_scores = VaeEngine(new.manifest, load_runtime(new, runtime)).elbo(rows, options)
    np.testing.assert_allclose(old_scores.log_likelihood, new_scores.log_likelihood, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(old_scores.elbo, new_scores.elbo, rtol=1e-6, atol=1e-5)


def test_draws_go_to_the_scorer_in_bounded_chunks_with_a_check_before_each():
    calls, checks = [], []

    def score(x, z):
        calls.append(z.shape[:2])
        return np.broadcast_to(x.reshape(len(x), 1), z.shape[:2]) + z[:, :, 0]

    x = np.arange(5, dtype=np.float32).reshape(5, 1)
    z = np.random.default_rng(0).standard_normal((5, 7, 2)).astype(np.float32)
    expected = x + z[:, :, 0]
    for chunk_rows, shapes in [(100, [(5, 7)]), (14, [(2, 7), (2, 7), (1, 7)]), (3, [(1, 3), (1, 3), (1, 1)] * 5)]:
        calls.clear(), checks.clear()
        out = scoring.log_likelihood_draws(x, z, score, chunk_rows=chunk_rows, check=lambda: checks.append(1))
        np.testing.assert_array_equal(out, expected)
        assert calls == shapes and len(checks) == len(shapes)


@pytest.mark.parametrize(
    "graph, rows, iw_samples",
    [("scorer", 2, 9000), ("elbo", 3, 5000)],  # 9,001 draws a row: 4 scorer calls; 5,001: a row per ELBO graph call
)
def test_the_engine_checks_the_deadline_between_graph_chunks(form_dirs, graph, rows, iw_samples):
    from service.core.engine import Deadline
    from service.core.errors import Timeout

    artifact = load_artifact(form_dirs["mlp-bernoulli"])

    class Expiring(OnnxRuntime):
        """Lets the deadline pass during the first call of the graph."""

        def __init__(self, artifact, deadline):
            super().__init__(artifact)
            self.deadline, self.calls = deadline, 0

        def _run(self, name, *values):
            if name == graph:
                self.calls += 1
                object.__setattr__(self.deadline, "at", 0.0)
            return super()._run(name, *values)

    deadline = Deadline.after(60.0)
    runtime = Expiring(artifact, deadline)
    engine = VaeEngine(artifact.manifest, runtime)
    request = engine.prepare_elbo(np.full((rows, 30), 0.5), ElboOptions(seed=0, iw_samples=iw_samples))
    with pytest.raises(Timeout):
        engine.elbo_batch([request], deadline)
    assert runtime.calls == 1


@pytest.mark.parametrize("form", ["mlp-gaussian-feature", "conv-gaussian-shared"])
def test_an_input_whose_likelihood_underflows_is_flagged_by_the_elbo_graph_as_by_the_scorer(form_dirs, form):
    """Far enough from the data a draw's float32 log-density is -inf (the scorer's and the ELBO graph's). Both
    paths then give -inf bounds and flag the input; a weighted sum over the draws (0 x -inf, as a first version of
    the ELBO graph took the reconstruction term) gives NaN, which no threshold flags."""
    artifact = load_artifact(form_dirs[form])
    rows = np.full((2, 30), 1e21)
    rows[1] = -1e21
    options = ElboOptions(seed=1, n_samples=2, iw_samples=3)
    scores = []
    for path in ("elbo", "scorer"):
        run = load_runtime(artifact, "onnx")
        run.has_elbo = path == "elbo"
        scores.append(VaeEngine(artifact.manifest, run).elbo(rows, options))
    for scored in scores:
        assert scored.elbo.tolist() == scored.log_likelihood.tolist() == [-np.inf, -np.inf]
        assert scored.decisions.is_anomaly.tolist() == [True, True]


@pytest.mark.parametrize("path", ["elbo", "scorer", "decoder"])
def test_an_input_whose_scores_overflow_to_nan_is_refused_naming_it(form_dirs, path):
    """Further out still, a model's float32 numbers can overflow to an infinite mu, and the bounds to NaN (inf - inf),
    which no threshold would flag: refused on every path, naming the input (the batcher then scores each request of
    a batch alone, so only its request fails). Which inputs overflow depends on the weights, so the runtime here
    makes the second row's mu (and the ELBO graph's KL) NaN, as such an overflow does."""
    artifact = load_artifact(form_dirs["mlp-gaussian-feature"])

    class Overflowing(OnnxRuntime):
        def _run(self, graph, *values):
            outputs = tuple(np.array(o) for o in super()._run(graph, *values))
            if graph in ("encoder", "elbo"):
                outputs[0 if graph == "encoder" else 2][1] = np.nan
            return outputs

    run = Overflowing(artifact)
    run.has_elbo, run.has_scorer = path == "elbo", path != "decoder"
    with pytest.raises(InvalidInput) as raised:
        VaeEngine(artifact.manifest, run).elbo(np.zeros((3, 30)), ElboOptions(seed=1, n_samples=2, iw_samples=3))
    assert str(raised.value) == (
        "instances[1]: too far from the training data to score: the model's numbers overflow (its ELBO is not a number)"
    )
