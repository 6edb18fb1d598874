"""`vae serve DIR` as users run it: a real uvicorn process answering over a socket."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

VAE = str(Path(sys.executable).with_name("vae"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("runtime", ["onnx", "torchscript"])
def test_vae_serve_answers_every_endpoint(digits_model_dir, runtime):
    port = free_port()
    server = subprocess.Popen(
        [VAE, "serve", str(digits_model_dir), "--host", "127.0.0.1", "--port", str(port), "--runtime", runtime],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready in 60 s"
            time.sleep(0.2)
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
        server.terminate()
        server.wait(timeout=30)
