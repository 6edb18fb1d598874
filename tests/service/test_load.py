"""A real server under concurrent load: batched answers equal solo answers, and SIGTERM loses nothing."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.core.artifact import load_artifact
from service.core.engine import ElboOptions, VaeEngine
from service.core.runtime import OnnxRuntime, available_cores
from tests.helpers import change_after_export, start_server, stop


@pytest.fixture(scope="module")
def digits_rows():
    from sklearn.datasets import load_digits

    return load_digits().data.astype(np.float64)


def test_thousands_of_concurrent_requests_match_their_solo_answers(digits_model_dir, digits_rows):
    process, base = start_server(digits_model_dir)
    rng = np.random.default_rng(0)
    requests = []
    for i in range(2000):
        rows = rng.integers(0, len(digits_rows), size=int(rng.integers(1, 4)))
        requests.append(
            {
                "instances": digits_rows[rows].tolist(),
                "n_samples": int(rng.integers(1, 4)),
                "iw_samples": int(rng.integers(1, 10)),
                "seed": i,
            }
        )

    async def run():
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=httpx.Timeout(60, pool=None)) as client:
            return await asyncio.gather(*(client.post("/elbo", json=body) for body in requests))

    try:
        responses = asyncio.run(run())
        metrics = httpx.get(f"{base}/metrics").text
    finally:
        stop(process)
    assert [r.status_code for r in responses] == [200] * len(requests)
    artifact = load_artifact(digits_model_dir)
    engine = VaeEngine(artifact.manifest, OnnxRuntime(artifact))
    for body, response in zip(requests, responses, strict=False):
        alone = engine.elbo(
            np.asarray(body["instances"]),
            ElboOptions(n_samples=body["n_samples"], seed=body["seed"], iw_samples=body["iw_samples"]),
        )
        got = response.json()
        np.testing.assert_allclose(got["elbo"], alone.elbo, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(got["log_likelihood"], alone.log_likelihood, rtol=1e-5, atol=1e-4)
        assert got["is_anomaly"] == alone.decisions.is_anomaly.tolist()
    count = float(
        next(
            line for line in metrics.splitlines() if line.startswith('vae_batch_requests_count{endpoint="/elbo"}')
        ).split()[-1]
    )
    total = float(
        next(
            line for line in metrics.splitlines() if line.startswith('vae_batch_requests_sum{endpoint="/elbo"}')
        ).split()[-1]
    )
    assert total == 2000 and count < total  # some runtime calls served several requests


def test_sigterm_finishes_every_accepted_request(digits_model_dir, digits_rows):
    process, base = start_server(digits_model_dir, env={"VAE_DRAIN_DELAY_S": "1.5"})
    body = {"instances": digits_rows[:8].tolist(), "n_samples": 400, "iw_samples": 400}

    async def run():
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
            in_flight = [asyncio.create_task(client.post("/elbo", json=body | {"seed": i})) for i in range(32)]
            await asyncio.sleep(0.3)  # every request is sent and accepted
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            async with httpx.AsyncClient(base_url=base, timeout=10) as probe:
                ready = await probe.get("/readyz")
            return ready, await asyncio.gather(*in_flight)

    try:
        ready, responses = asyncio.run(run())
        assert ready.status_code == 503 and ready.json() == {"status": "not ready", "reason": "shutting down"}
        assert [r.status_code for r in responses] == [200] * 32
        # uvicorn re-raises the signal once it has drained, so the exit status says "ended by SIGTERM"
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        stop(process)


def test_several_worker_processes_share_the_cores(digits_model_dir, tmp_path):
    """Also: the command's check of the directory and each worker's hash only the ONNX graphs they load, so a
    checkpoint or TorchScript graph changed by hand stops neither."""
    model = Path(shutil.copytree(digits_model_dir, tmp_path / "digits"))
    change_after_export(model / "checkpoint.pt", model / "elbo.pt")
    process, base = start_server(model, "--workers", "2")
    try:
        card = httpx.get(f"{base}/v1/model").json()
        assert card["runtime_threads"] == max(1, available_cores() // 2)
        for _ in range(10):
            assert httpx.post(f"{base}/elbo", json={"instances": [[0.0] * 64]}).status_code == 200
    finally:
        stop(process)
