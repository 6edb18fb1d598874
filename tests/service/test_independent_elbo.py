"""/elbo equals an independent computation from encoder.onnx, decoder.onnx and manifest.json alone.

Nothing from service/ or training/ is used to compute the expected numbers.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnxruntime as ort
import pytest

from tests.helpers import instances_for


def independent_terms(model_dir, instances, n_draws, seed):
    manifest = json.loads((model_dir / "manifest.json").read_text())
    encoder = ort.InferenceSession(str(model_dir / "encoder.onnx"))
    decoder = ort.InferenceSession(str(model_dir / "decoder.onnx"))
    offset = np.asarray(manifest["preprocessing"]["offset"], dtype=np.float64)
    scale = np.asarray(manifest["preprocessing"]["scale"], dtype=np.float64)
    raw = np.asarray(instances, dtype=np.float64).reshape(len(instances), -1)
    x = (raw - offset) / scale
    shape = [len(x), *manifest["input_shape"]]
    mu, logvar = encoder.run(None, {"x": x.reshape(shape).astype(np.float32)})
    mu, logvar = mu.astype(np.float64), logvar.astype(np.float64)
    kl = 0.5 * np.sum(mu**2 + np.exp(logvar) - 1 - logvar, axis=1)

    rng = np.random.default_rng(seed)
    logs = []
    for i in range(len(x)):
        z = mu[i] + np.exp(0.5 * logvar[i]) * rng.standard_normal((n_draws, len(mu[i])))
        outputs = [o.reshape(n_draws, -1).astype(np.float64) for o in decoder.run(None, {"z": z.astype(np.float32)})]
        if manifest["likelihood"] == "bernoulli":
            (logits,) = outputs
            per_draw = np.sum(x[i] * logits - np.logaddexp(0, logits), axis=1)
        else:
            mean, dec_logvar = outputs
            per_draw = np.sum(
                -0.5 * (math.log(2 * math.pi) + dec_logvar + (x[i] - mean) ** 2 / np.exp(dec_logvar)), axis=1
            )
            per_draw -= np.sum(np.broadcast_to(np.log(scale), x[i].shape))  # density in raw units
        logs.append(per_draw)
    logs = np.asarray(logs)
    return kl, logs.mean(axis=1), logs.std(axis=1) / math.sqrt(n_draws)


@pytest.mark.parametrize("model", ["digits", "tabular"])
def test_elbo_matches_an_independent_computation(clients, model_dirs, model):
    client = clients[model, "onnx"]
    instances = instances_for(client, 4)
    body = client.post("/elbo", json={"instances": instances, "n_samples": 2000, "seed": 1}).json()
    kl, reconstruction, stderr = independent_terms(model_dirs[model], instances, 4000, seed=99)
    np.testing.assert_allclose(body["kl"], kl, rtol=0, atol=1e-4)
    # Two independent Monte Carlo estimates: they differ by at most a few combined standard errors.
    combined = stderr * math.sqrt(1 + 4000 / 2000)
    assert np.all(np.abs(np.asarray(body["reconstruction"]) - reconstruction) < 5 * combined + 1e-6)
    np.testing.assert_allclose(body["elbo"], np.asarray(body["reconstruction"]) - np.asarray(body["kl"]), atol=1e-9)
