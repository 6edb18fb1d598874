"""The one loader: a directory that is missing, incomplete or corrupt stops start-up with one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.core.artifact import load_artifact
from service.core.errors import ArtifactError
from tests.helpers import change_after_export

VAE = str(Path(sys.executable).with_name("vae"))


@pytest.fixture
def model_copy(tmp_path, digits_model_dir) -> Path:
    return Path(shutil.copytree(digits_model_dir, tmp_path / "copy"))


def test_loads_a_complete_directory(digits_model_dir):
    artifact = load_artifact(digits_model_dir)
    assert artifact.manifest.input_shape == [1, 8, 8]
    assert artifact.path("decoder", "onnx") == digits_model_dir / "decoder.onnx"


def test_missing_directory(tmp_path):
    with pytest.raises(ArtifactError) as err:
        load_artifact(tmp_path / "nope")
    assert str(err.value) == f"model directory {tmp_path / 'nope'} does not exist"


def test_directory_without_manifest(tmp_path):
    with pytest.raises(ArtifactError) as err:
        load_artifact(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'manifest.json'} is missing: {tmp_path} is not a complete model directory "
        f"(write one with `vae train --out {tmp_path}`)"
    )


def test_missing_file(model_copy):
    (model_copy / "decoder.onnx").unlink()
    with pytest.raises(ArtifactError) as err:
        load_artifact(model_copy)
    assert str(err.value) == f"{model_copy / 'decoder.onnx'} is missing: the model directory is incomplete"


def test_changed_file_fails_its_sha256(model_copy):
    change_after_export(model_copy / "encoder.onnx")
    with pytest.raises(ArtifactError) as err:
        load_artifact(model_copy)
    assert str(err.value).startswith(f"{model_copy / 'encoder.onnx'} fails its sha256 check (manifest ")
    assert str(err.value).endswith("it changed after export")


@pytest.mark.parametrize(("runtime", "other_format"), [("onnx", "pt"), ("torchscript", "onnx")])
def test_a_runtime_hashes_its_own_graphs_and_needs_the_rest_present(
    model_copy, digits_model_dir, runtime, other_format
):
    """What the service loads is hashed; files it never reads (the checkpoint, the other format's graphs,
    the training metrics) need only exist."""
    own_format = "onnx" if runtime == "onnx" else "pt"
    unread = ("checkpoint.pt", f"decoder.{other_format}", f"elbo.{other_format}", "metrics.jsonl")
    change_after_export(*(model_copy / name for name in unread))
    assert load_artifact(model_copy, runtime=runtime).manifest.input_shape == [1, 8, 8]
    with pytest.raises(ArtifactError) as err:  # and every file is still hashed without a runtime
        load_artifact(model_copy)
    assert str(err.value).startswith(f"{model_copy / 'checkpoint.pt'} fails its sha256 check (manifest ")

    scorer = model_copy / f"scorer.{other_format}"
    scorer.unlink()
    with pytest.raises(ArtifactError) as err:
        load_artifact(model_copy, runtime=runtime)
    assert str(err.value) == f"{scorer} is missing: the model directory is incomplete"

    shutil.copy(digits_model_dir / scorer.name, scorer)
    for graph in ("encoder", "decoder", "scorer", "elbo"):  # each graph the runtime loads is hashed
        own = model_copy / f"{graph}.{own_format}"
        change_after_export(own)
        with pytest.raises(ArtifactError) as err:
            load_artifact(model_copy, runtime=runtime)
        assert str(err.value).startswith(f"{own} fails its sha256 check (manifest ")
        shutil.copy(digits_model_dir / own.name, own)


def test_an_unknown_runtime_is_refused(model_copy, tmp_path):
    from service.core.runtime import load_runtime

    for call in (
        lambda: load_artifact(model_copy, runtime="tensorrt"),
        lambda: load_artifact(tmp_path / "nope", runtime="tensorrt"),  # the runtime is named first
        lambda: load_runtime(load_artifact(model_copy), "tensorrt"),
    ):
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == "unknown runtime 'tensorrt'; expected one of onnx, torchscript"


def test_manifest_that_is_not_json(model_copy):
    (model_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError) as err:
        load_artifact(model_copy)
    assert str(err.value).startswith(f"{model_copy / 'manifest.json'} is not readable JSON: ")


def test_unsupported_format_version(model_copy):
    manifest = json.loads((model_copy / "manifest.json").read_text())
    (model_copy / "manifest.json").write_text(json.dumps(manifest | {"format_version": 99}))
    with pytest.raises(ArtifactError) as err:
        load_artifact(model_copy)
    assert str(err.value) == f"{model_copy / 'manifest.json'} has format_version 99; this service reads 1"


def test_manifest_with_a_bad_field(model_copy):
    manifest = json.loads((model_copy / "manifest.json").read_text())
    manifest["latent_dim"] = 0
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError) as err:
        load_artifact(model_copy)
    assert str(err.value) == f"{model_copy / 'manifest.json'} is invalid: latent_dim: Input should be greater than 0"


@pytest.mark.parametrize(
    "name, problem",
    [
        ("../encoder.onnx", "a path, not a plain name"),
        ("/tmp/encoder.onnx", "a path, not a plain name"),
        ("graphs/encoder.onnx", "a path, not a plain name"),
        ("graphs\\encoder.onnx", "a path, not a plain name"),
        ("..", "not a file name"),
        ("encoder\n.onnx", "a name with control characters"),
    ],
)
def test_file_names_must_be_plain_names_in_the_directory(model_copy, name, problem):
    """A manifest naming a file outside its directory, listed with the right sha256, used to be loaded."""
    outside = model_copy.parent / "encoder.onnx"
    shutil.copy(model_copy / "encoder.onnx", outside)
    manifest = json.loads((model_copy / "manifest.json").read_text())
    manifest["graphs"]["encoder"]["onnx"] = name
    manifest["files"][name] = manifest["files"]["encoder.onnx"]
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError) as err:
        load_artifact(model_copy, verify=False)
    assert str(err.value) == (
        f"{model_copy / 'manifest.json'} names the file {name!r}: {problem}; files must be plain names in {model_copy}"
    )
    assert "\n" not in str(err.value)


def test_a_listed_file_must_be_a_plain_name_too(model_copy):
    manifest = json.loads((model_copy / "manifest.json").read_text())
    manifest["files"]["../../etc/passwd"] = "0" * 64
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError) as err:
        load_artifact(model_copy)
    assert str(err.value) == (
        f"{model_copy / 'manifest.json'} names the file '../../etc/passwd': a path, not a plain name; "
        f"files must be plain names in {model_copy}"
    )


@pytest.mark.parametrize("break_it", ["delete", "corrupt"])
def test_vae_serve_stops_with_one_line(model_copy, break_it):
    target = model_copy / "encoder.onnx"
    if break_it == "delete":
        target.unlink()
    else:
        target.write_bytes(b"garbage")
    result = subprocess.run([VAE, "serve", str(model_copy), "--port", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"vae serve: {target}")


def test_asgi_app_stops_with_one_line(model_copy):
    (model_copy / "checkpoint.pt").unlink()
    env = os.environ | {"VAE_MODEL_DIR": str(model_copy)}
    result = subprocess.run(
        [sys.executable, "-c", "import service.http.main"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"vae serve: {model_copy / 'checkpoint.pt'} is missing: the model directory is incomplete"
    )


def test_asgi_app_refuses_a_bad_setting(digits_model_dir):
    env = os.environ | {"VAE_MODEL_DIR": str(digits_model_dir), "VAE_RUNTIME": "tensorflow"}
    result = subprocess.run(
        [sys.executable, "-c", "import service.http.main"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "vae serve: invalid setting VAE_RUNTIME: Input should be 'onnx' or 'torchscript' (got 'tensorflow')"
    )


def test_the_service_and_vae_score_hash_only_the_onnx_graphs_they_load(model_copy, start_app, tmp_path):
    """`vae serve` and `vae score` name their runtime to the loader: a changed checkpoint or TorchScript graph
    does not stop them, a changed ONNX graph does."""
    from service.core.bulk import score_file

    change_after_export(model_copy / "checkpoint.pt", model_copy / "elbo.pt")
    client = start_app(model_copy)
    instance = [0.0] * 64
    assert client.post("/elbo", json={"instances": [instance], "seed": 0}).status_code == 200
    data = tmp_path / "rows.npy"
    np.save(data, np.zeros((3, 64)))
    assert score_file(model_copy, data, tmp_path / "scores.csv", progress=False) == 3

    change_after_export(model_copy / "elbo.onnx")
    message = f"{model_copy / 'elbo.onnx'} fails its sha256 check"
    with pytest.raises(ArtifactError, match=message):
        start_app(model_copy)
    with pytest.raises(ArtifactError, match=message):
        score_file(model_copy, data, tmp_path / "again.csv", progress=False)
    serve = subprocess.run([VAE, "serve", str(model_copy), "--port", "0"], capture_output=True, text=True, timeout=60)
    assert serve.returncode == 2
    assert serve.stderr.startswith(f"vae serve: {message}")
