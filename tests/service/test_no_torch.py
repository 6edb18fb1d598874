"""Serving with the onnx runtime never imports torch."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import sys
from fastapi.testclient import TestClient
from service.http.main import app
with TestClient(app) as client:
    assert client.get("/readyz").status_code == 200
    for path, body in [("/encode", {"instances": [[0.0] * 64]}), ("/elbo", {"instances": [[0.0] * 64], "n_samples": 2}),
                       ("/sample", {"n_samples": 2, "decode": True}), ("/decode", {"z": [[0.0] * 4]})]:
        assert client.post(path, json=body).status_code == 200, path
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""


def test_onnx_serving_never_imports_torch(digits_model_dir):
    env = os.environ | {"VAE_MODEL_DIR": str(digits_model_dir), "VAE_RUNTIME": "onnx"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_vae_command_does_not_import_torch_to_parse_serve():
    code = "import sys; from vae_cli.main import build_parser; build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
