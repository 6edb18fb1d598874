"""A batch of /elbo requests scores each request exactly as it is scored alone.

The engine stacks the draws of requests that draw alike and runs the maths once per group; these tests hold
that to bit-for-bit equality (==, not approx) with each request sent alone, for mixed batches.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.core import scoring, seeding
from service.core.artifact import load_artifact
from service.core.engine import ELBO_OUTPUTS, ElboOptions, Scored, VaeEngine
from service.core.runtime import ONE_THREAD_CALL_ROWS, load_runtime

# Seeds, L, K, thresholds (or fpr) and feature_scores all differ; some requests draw alike (the same L, K and
# path), so they share a group, and some hold several instances.
MIXED = [
    (1, ElboOptions(n_samples=1, seed=11, iw_samples=1)),
    (3, ElboOptions(n_samples=2, seed=12, iw_samples=5, threshold=40.0)),
    (1, ElboOptions(n_samples=1, seed=13, iw_samples=1, feature_scores=True)),
    (2, ElboOptions(n_samples=1, seed=14, iw_samples=1, fpr=0.2)),
    (1, ElboOptions(n_samples=3, seed=15, iw_samples=None, feature_scores=True, threshold=-5.0)),
    (4, ElboOptions(n_samples=2, seed=16, iw_samples=5)),
    (1, ElboOptions(n_samples=1, seed=2**52, iw_samples=1)),
]


def raw_rows(engine: VaeEngine, n: int, seed: int) -> np.ndarray:
    """n rows in raw units inside the model's data range."""
    rng = np.random.default_rng(seed)
    shape = (n, engine.manifest.n_features)
    model_space = rng.random(shape) if engine.manifest.likelihood == "bernoulli" else rng.standard_normal(shape)
    raw: np.ndarray = engine.manifest.preprocessing.to_raw(model_space)
    return raw


def assert_same(batched: Scored, alone: Scored) -> None:
    for output in ELBO_OUTPUTS:
        got, want = batched.value(output.name), alone.value(output.name)
        if output.kind == "per_request":
            assert got == want, output.name
        elif want is None:
            assert got is None, output.name
        else:
            assert got.dtype == want.dtype and got.shape == want.shape, output.name
            assert np.array_equal(got, want), output.name


def mixed_batch(
    model_dir, runtime: str, path: str = "elbo"
) -> tuple[VaeEngine, list[tuple[np.ndarray, ElboOptions]], list[Scored]]:
    """A batch of MIXED, scored through the ELBO graph or (path "scorer") through the encoder and the scorer."""
    artifact = load_artifact(model_dir)
    engine = VaeEngine(artifact.manifest, load_runtime(artifact, runtime))
    engine.runtime.has_elbo = path == "elbo"
    inputs = [(raw_rows(engine, n, seed=i), options) for i, (n, options) in enumerate(MIXED)]
    return engine, inputs, engine.elbo_batch([engine.prepare_elbo(x, options) for x, options in inputs])


@pytest.mark.parametrize("path", ["elbo", "scorer"])
@pytest.mark.parametrize("model", ["digits", "tabular"])
def test_a_mixed_batch_scores_each_request_as_alone(model_dirs, model, path):
    engine, inputs, batched = mixed_batch(model_dirs[model], "onnx", path)
    for (x, options), scored in zip(inputs, batched, strict=True):
        assert_same(scored, engine.elbo(x, options))
    # The requests kept their own settings: the default K, the feature scores only where asked.
    assert [s.iw_samples for s in batched] == [1, 5, 1, 1, engine.manifest.scoring.iw_samples, 5, 1]
    assert [s.feature_scores is not None for s in batched] == [False, False, True, False, True, False, False]
    thresholds = [s.decisions.threshold for s in batched]
    assert (thresholds[0], thresholds[1], thresholds[4]) == (engine.default_threshold, 40.0, -5.0)


def test_a_batch_of_many_one_instance_requests_scores_each_as_alone(model_dirs, monkeypatch):
    """Enough requests that their generators are seeded together (service/core/seeding.py), seeds of every size."""
    seeded_together, states = [], seeding.pcg64_states
    monkeypatch.setattr(seeding, "pcg64_states", lambda seeds: seeded_together.append(len(seeds)) or states(seeds))
    artifact = load_artifact(model_dirs["digits"])
    engine = VaeEngine(artifact.manifest, load_runtime(artifact, "onnx"))
    seeds = [0, 1, 2**32, 2**53 - 1, 2**63 - 1, *range(100, 100 + 2 * seeding.MIN_VECTORISED)]
    inputs = [(raw_rows(engine, 1, seed=i), ElboOptions(seed=seed, iw_samples=4)) for i, seed in enumerate(seeds)]
    batched = engine.elbo_batch([engine.prepare_elbo(x, options) for x, options in inputs])
    assert seeded_together == [len(seeds)]
    for (x, options), scored in zip(inputs, batched, strict=True):
        assert_same(scored, engine.elbo(x, options))


class RecordingRuntime:
    """The ONNX runtime, keeping every z the scorer is given and every eps the ELBO graph is given; with_elbo=False
    hides the ELBO graph, so the engine takes the encoder and the scorer."""

    def __init__(self, runtime, with_elbo: bool) -> None:
        self.runtime, self.has_scorer, self.has_elbo = runtime, runtime.has_scorer, with_elbo and runtime.has_elbo
        self.call_rows = runtime.call_rows
        self.draws, self.noise = [], []

    def encode(self, x):
        return self.runtime.encode(x)

    def decode(self, z):
        return self.runtime.decode(z)

    def score(self, x, z):
        self.draws.append(z.copy())
        return self.runtime.score(x, z)

    def elbo_terms(self, x, eps):
        self.noise.append(eps.copy())
        return self.runtime.elbo_terms(x, eps)


@pytest.mark.parametrize("path", ["elbo", "scorer"])
@pytest.mark.parametrize("alone", [2, seeding.MIN_VECTORISED + 2])
def test_each_request_draws_the_elbos_noise_then_l_ks_from_its_own_seed(model_dirs, alone, path):
    """Whatever the batch, a request's noise is numpy's default_rng(seed) drawing (B, L, d) for the ELBO, then
    (B, K, d) for L_K: for one-instance requests (drawn in one call) and a three-instance one, in a batch small
    enough for numpy's own generators and in one whose generators are seeded together. The ELBO graph is given
    that noise; without it, the scorer is given z = mu + sigma * eps."""
    artifact = load_artifact(model_dirs["digits"])
    runtime = RecordingRuntime(load_runtime(artifact, "onnx"), with_elbo=path == "elbo")
    engine = VaeEngine(artifact.manifest, runtime)
    sizes = [3] + [1] * alone
    inputs = [
        (raw_rows(engine, n, seed=i), ElboOptions(n_samples=3, seed=40 + i, iw_samples=5)) for i, n in enumerate(sizes)
    ]
    prepared = [engine.prepare_elbo(x, options) for x, options in inputs]
    engine.elbo_batch(prepared)
    eps = []
    for n, (_, options) in zip(sizes, inputs, strict=True):
        rng = np.random.default_rng(options.seed)
        eps.append(
            np.concatenate(
                [rng.standard_normal((n, k, engine.manifest.latent_dim), dtype=np.float32) for k in (3, 5)], axis=1
            )
        )
    if path == "elbo":
        (noise,) = runtime.noise  # one group: one ELBO graph call, and no scorer call
        assert runtime.draws == [] and np.array_equal(noise, np.concatenate(eps))
    else:
        (z,) = runtime.draws  # one group: one scorer call
        mu, logvar = runtime.encode(np.concatenate([p.x for p in prepared]))
        assert runtime.noise == [] and np.array_equal(z, scoring.reparameterize(mu, logvar, np.concatenate(eps)))


@pytest.mark.parametrize("path", ["elbo", "scorer"])
@pytest.mark.parametrize(
    "rows, n_samples, iw_samples, calls",
    [
        (300, 3, 5, {"elbo": [[1024, 1024, 352], [2400]], "scorer": [[1024, 1024, 352], [2400]]}),  # 128 rows a call
        # A row of more draws than a call takes: whole and alone to the ELBO graph, in slices to the scorer.
        (3, 1, 1024, {"elbo": [[1025, 1025, 1025], [3075]], "scorer": [[1024, 1] * 3, [3075]]}),
    ],
)
def test_a_one_thread_runtime_cuts_its_calls_smaller_and_the_numbers_stay_the_same(
    model_dirs, path, rows, n_samples, iw_samples, calls
):
    """With one thread the graphs get ONE_THREAD_CALL_ROWS draws per call (the ELBO graph whole rows of draws, the
    scorer slices of a row when one row has more), so their intermediate tensors stay in the core's cache; with
    more threads the whole batch goes in one call. Every number is the same either way."""
    artifact = load_artifact(model_dirs["digits"])
    cut = RecordingRuntime(load_runtime(artifact, "onnx", threads=1), with_elbo=path == "elbo")
    whole = RecordingRuntime(load_runtime(artifact, "onnx", threads=2), with_elbo=path == "elbo")
    assert (cut.call_rows, whole.call_rows) == (ONE_THREAD_CALL_ROWS, scoring.DECODE_CHUNK_ROWS) == (1024, 8192)
    options = ElboOptions(n_samples=n_samples, seed=5, iw_samples=iw_samples, feature_scores=True)
    answers = []
    for runtime in (cut, whole):
        engine = VaeEngine(artifact.manifest, runtime)
        answers.append(engine.elbo(raw_rows(engine, rows, seed=1), options))
    assert_same(*answers)
    made = [[a.shape[0] * a.shape[1] for a in (r.noise if path == "elbo" else r.draws)] for r in (cut, whole)]
    assert made == calls[path]


@pytest.mark.parametrize("model", ["digits", "tabular"])
def test_torchscript_batches_agree_with_alone_to_float32_rounding(model_dirs, model):
    """torch's matrix products pick their kernels by batch size, so a TorchScript encoder's mu and logvar for one
    row move in the last float32 bits with the rows beside it (main's engine did the same): close, not equal."""
    engine, inputs, batched = mixed_batch(model_dirs[model], "torchscript")
    for (x, options), scored in zip(inputs, batched, strict=True):
        alone = engine.elbo(x, options)
        for name in ("elbo", "reconstruction", "kl", "log_likelihood", "p_value"):
            np.testing.assert_allclose(scored.value(name), alone.value(name), rtol=1e-5, atol=1e-5, err_msg=name)
        assert (scored.seed, scored.n_samples, scored.iw_samples) == (alone.seed, alone.n_samples, alone.iw_samples)


def test_a_batch_in_any_order_gives_the_same_numbers(model_dirs):
    """Each request's rows land where it is in the batch, whichever group it joins."""
    artifact = load_artifact(model_dirs["digits"])
    engine = VaeEngine(artifact.manifest, load_runtime(artifact, "onnx"))
    prepared = [engine.prepare_elbo(raw_rows(engine, n, seed=i), o) for i, (n, o) in enumerate(MIXED)]
    forward = engine.elbo_batch(prepared)
    backward = engine.elbo_batch(prepared[::-1])[::-1]
    for a, b in zip(forward, backward, strict=True):
        assert_same(a, b)


def test_one_instance_requests_at_one_setting_match_alone(model_dirs):
    """The serving hot path: many one-instance requests that all draw alike form one group."""
    artifact = load_artifact(model_dirs["digits"])
    engine = VaeEngine(artifact.manifest, load_runtime(artifact, "onnx"))
    x = raw_rows(engine, 32, seed=3)
    options = [ElboOptions(seed=seed, iw_samples=1) for seed in range(32)]
    batched = engine.elbo_batch([engine.prepare_elbo(x[i : i + 1], o) for i, o in enumerate(options)])
    for i, (scored, o) in enumerate(zip(batched, options, strict=True)):
        assert_same(scored, engine.elbo(x[i : i + 1], o))
    assert len({float(s.elbo[0]) for s in batched}) == 32  # every request drew its own noise
