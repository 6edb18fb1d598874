"""The Open Inference Protocol v2 as MLServer's codecs and types speak it (mlserver 1.7.1), against a real
`vae serve` process. mlserver needs fastapi<0.116, so it lives in a venv of its own (.venv-mlserver, made by
scripts/mlserver_setup.sh from `make system`), and tests/service/mlserver_client.py runs there: it builds the
requests with the codecs, POSTs them, decodes the answers with the codecs and prints them as JSON. Each answer
must equal the native API's, to the bit, and each refusal must carry the protocol's status and our message."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.helpers import missing_tool, start_server, stop

ROOT = Path(__file__).resolve().parents[2]
MLSERVER_PYTHON = ROOT / ".venv-mlserver" / "bin" / "python"
CLIENT = Path(__file__).with_name("mlserver_client.py")
ELBO_OUTPUTS = ["elbo", "reconstruction", "kl", "log_likelihood", "anomaly_score", "is_anomaly", "p_value"]
PARAMETERS = {"seed": 5, "n_samples": 8}


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    return load_digits().data[:3].reshape(3, 1, 8, 8).tolist()  # raw units, as the native API takes them


@pytest.fixture(scope="module")
def mlserver_python(request) -> Path:
    """The python of .venv-mlserver, checked before any model is trained or server started."""
    if not MLSERVER_PYTHON.exists():
        missing_tool(request, "MLServer's venv (.venv-mlserver) is", "MLServer's codecs were not tested")
    return MLSERVER_PYTHON


@pytest.fixture(scope="module")
def served(mlserver_python, digits_model_dir, digits):
    """The real server's base URL, and the answers of MLServer's codecs to mlserver_client.py's cases."""
    process, base = start_server(digits_model_dir)
    try:
        job = json.dumps({"model": "digits", "instances": digits, "parameters": PARAMETERS})
        run = subprocess.run(
            [str(mlserver_python), str(CLIENT), base], input=job, capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stderr
        yield base, json.loads(run.stdout)
    finally:
        stop(process)


def native(base: str, path: str, body: dict) -> dict:
    response = httpx.post(f"{base}{path}", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_numpy_request_codec_elbo_equals_native(served, digits):
    base, answers = served
    answer = answers["elbo_np_request"]
    expected = native(base, "/elbo", {"instances": digits, **PARAMETERS})
    assert answer["status"] == 200
    assert answer["model_name"] == "digits-elbo"
    assert answer["outputs"] == {name: expected[name] for name in ELBO_OUTPUTS}
    assert answer["dtypes"] == {name: "bool" if name == "is_anomaly" else "float64" for name in ELBO_OUTPUTS}
    assert answer["parameters"] == {name: expected[name] for name in ("threshold", "n_samples", "iw_samples", "seed")}
    assert answer["parameters"]["seed"] == PARAMETERS["seed"]


def test_pandas_codec_reads_the_elbo_answer_as_a_table(served, digits):
    base, answers = served
    table = answers["elbo_np_request"]["table"]
    expected = native(base, "/elbo", {"instances": digits, **PARAMETERS})
    assert list(table) == ELBO_OUTPUTS
    assert table == {name: expected[name] for name in ELBO_OUTPUTS}


def test_numpy_input_codec_encode_equals_native(served, digits):
    base, answers = served
    answer = answers["encode_np_input"]
    expected = native(base, "/encode", {"instances": digits})
    assert answer["status"] == 200
    assert answer["model_name"] == "digits-encode"
    assert answer["outputs"] == {name: expected[name] for name in ("mu", "logvar", "sigma")}
    assert answer["dtypes"] == {"mu": "float64", "logvar": "float64", "sigma": "float64"}
    assert answer["table"] is None  # (3, latent_dim) outputs are not one column each


def test_a_pandas_table_request_is_400(served):
    _, answers = served
    assert answers["elbo_pd_request"] == {
        "status": 400,
        "error": "parameters.content_type: expected 'np' (the tensors are read as numpy arrays), got 'pd'",
    }


def test_an_unknown_model_is_404_in_the_protocols_error_type(served):
    _, answers = served
    assert answers["unknown_model"] == {
        "status": 404,
        "error": "unknown model 'digits-heatmap'; this server serves digits-encode, digits-sample, digits-decode, "
        "digits-elbo",
    }


def test_a_bad_shape_is_400_in_the_protocols_error_type(served):
    _, answers = served
    assert answers["bad_shape"] == {
        "status": 400,
        "error": "instances: each instance must be 64 numbers or nested lists shaped [1, 8, 8]; "
        "got instances shaped [63]",
    }
