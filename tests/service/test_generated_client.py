"""A client generated from the service's own /openapi.json by openapi-python-client (PyPI, pinned in the test
extra) imports and works against a real `vae serve`: its /elbo numbers equal the native client's, and the v2
metadata comes back as the typed models the document describes. Generation reads the document from a file,
so it needs no network; client/openapi-python-client.yaml holds the settings (docs/client.md)."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from vae_client import VaeClient

GENERATOR = str(Path(sys.executable).with_name("openapi-python-client"))
CONFIG = Path(__file__).resolve().parents[2] / "client" / "openapi-python-client.yaml"
PACKAGE = "vae_generated_api"


@pytest.fixture(scope="module")
def generated(served_digits, tmp_path_factory):
    """The generated package, imported, and what the generator printed."""
    root = tmp_path_factory.mktemp("generated")
    spec = root / "openapi.json"
    spec.write_bytes(httpx.get(f"{served_digits}/openapi.json").content)
    command = [GENERATOR, "generate", "--path", str(spec), "--meta", "none", "--config", str(CONFIG)]
    done = subprocess.run(
        [*command, "--output-path", str(root / PACKAGE)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(PACKAGE), done.stdout + done.stderr
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def test_every_generated_module_imports(generated):
    package, _ = generated
    api = importlib.import_module(f"{package.__name__}.api")
    modules = [m.name for m in pkgutil.walk_packages(api.__path__, f"{api.__name__}.")]
    for name in modules:
        importlib.import_module(name)  # a NameError such as `Unset` (the generator's issue 1451) fails here
    routes = {name.rsplit(".", 1)[1] for name in modules if not name.endswith("__init__")}
    assert {"elbo", "encode", "sample", "decode", "model_card", "model_metadata", "server_metadata"} <= routes


def test_only_the_v2_infer_routes_are_left_out(generated):
    _, printed = generated
    left_out = [line for line in printed.splitlines() if "Endpoint will not be generated" in line]
    assert left_out == [
        "WARNING parsing POST /v2/models/{model_name}/infer within open_inference_protocol_v2. "
        "Endpoint will not be generated.",
        "WARNING parsing POST /v2/models/{model_name}/versions/{model_version}/infer within "
        "open_inference_protocol_v2. Endpoint will not be generated.",
    ]


def test_generated_elbo_equals_the_native_client(generated, served_digits):
    package, _ = generated
    elbo = importlib.import_module(f"{package.__name__}.api.inference.elbo")
    models = importlib.import_module(f"{package.__name__}.models")
    from sklearn.datasets import load_digits

    digits = load_digits().data[:5].reshape(5, 1, 8, 8)
    client = package.Client(base_url=served_digits)
    body = models.ElboJsonElboRequest(instances=digits.tolist(), n_samples=3, iw_samples=4, seed=11)
    answer = elbo.sync(client=client, body=body)
    assert isinstance(answer, models.ElboResponse), answer
    with VaeClient(served_digits) as native:
        expected = native.elbo(digits, n_samples=3, iw_samples=4, seed=11)
    for name in ("elbo", "reconstruction", "kl", "log_likelihood", "anomaly_score", "p_value"):
        np.testing.assert_array_equal(np.asarray(getattr(answer, name)), getattr(expected, name), err_msg=name)
    assert answer.is_anomaly == expected.is_anomaly.tolist()
    assert (answer.threshold, answer.n_samples, answer.iw_samples, answer.seed) == (
        expected.threshold,
        3,
        4,
        11,
    )


def test_generated_errors_are_the_documented_error_model(generated, served_digits):
    package, _ = generated
    elbo = importlib.import_module(f"{package.__name__}.api.inference.elbo")
    models = importlib.import_module(f"{package.__name__}.models")
    response = elbo.sync_detailed(
        client=package.Client(base_url=served_digits), body=models.ElboJsonElboRequest(instances=[])
    )
    assert response.status_code == 422
    assert isinstance(response.parsed, models.Error)
    assert (response.parsed.code, response.parsed.error) == (
        "invalid_input",
        "instances: expected a non-empty list, got []",
    )


def test_generated_v2_metadata_is_typed(generated, served_digits):
    package, _ = generated
    metadata = importlib.import_module(f"{package.__name__}.api.open_inference_protocol_v2.model_metadata")
    models = importlib.import_module(f"{package.__name__}.models")
    answer = metadata.sync(client=package.Client(base_url=served_digits), model_name="digits-encode")
    assert isinstance(answer, models.ModelMetadata)
    assert answer.name == "digits-encode"
    assert answer.platform == models.ModelMetadataPlatform.ONNX_ONNXV1
    assert [(t.name, t.datatype, t.shape) for t in answer.inputs] == [("instances", "FP64", [-1, 1, 8, 8])]
    assert [t.name for t in answer.outputs] == ["mu", "logvar", "sigma"]
    missing = metadata.sync(client=package.Client(base_url=served_digits), model_name="digits-nothing")
    assert isinstance(missing, models.ProtocolError)
    assert missing.error.startswith("unknown model 'digits-nothing'; this server serves digits-encode")
