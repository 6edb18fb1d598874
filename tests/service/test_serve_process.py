"""`vae serve DIR` as users run it: a real uvicorn process answering over a socket."""

from __future__ import annotations

import httpx
import pytest

from tests.service.test_load import start_server, stop


@pytest.mark.parametrize("runtime", ["onnx", "torchscript"])
def test_vae_serve_answers_every_endpoint(digits_model_dir, runtime):
    server, base = start_server(digits_model_dir, "--host", "127.0.0.1", "--runtime", runtime)
    try:
        digit = [[0.0] * 64]
        assert httpx.get(f"{base}/healthz").json() == {"status": "alive"}
        assert httpx.get(f"{base}/v1/model").json()["runtime"] == runtime
        assert httpx.post(f"{base}/encode", json={"instances": digit}).status_code == 200
        assert httpx.post(f"{base}/decode", json={"z": [[0.0] * 4]}).status_code == 200
        assert httpx.post(f"{base}/sample", json={"n_samples": 3, "decode": True}).status_code == 200
        elbo = httpx.post(f"{base}/elbo", json={"instances": digit, "n_samples": 4, "seed": 1})
        assert elbo.status_code == 200 and len(elbo.json()["elbo"]) == 1
        bad = httpx.post(f"{base}/elbo", content=b"{", headers={"content-type": "application/json"})
        assert bad.status_code == 400
    finally:
        stop(server)
