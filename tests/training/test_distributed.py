"""Data-parallel training with torchrun (gloo on CPU), and device selection."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from service.core.artifact import load_artifact
from training.distributed import DeviceError, World, resolve_device

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
VAE = str(Path(sys.executable).with_name("vae"))
# --standalone: a rendezvous on a port that the store picks itself, free by construction. Without it the
# port depends on torch's version: older torchrun takes the fixed 29500, which fails whenever another run
# on this machine holds it (torch 2.13, pinned here, picks localhost:0 for one node on its own).
TORCHRUN_2 = [TORCHRUN, "--standalone", "--nproc-per-node", "2"]
DEFAULT_RENDEZVOUS_PORT = 29500
COMMON = [
    "--data",
    "digits",
    "--epochs",
    "8",
    "--hidden",
    "64,32",
    "--latent-dim",
    "4",
    "--patience",
    "50",
    "--no-progress",
]


@contextmanager
def default_port_taken():
    """Holds torchrun's default rendezvous port, as another run on this machine would (when it is free)."""
    with socket.socket() as taken:
        try:
            taken.bind(("127.0.0.1", DEFAULT_RENDEZVOUS_PORT))
            taken.listen()
        except OSError:
            pass  # someone else holds it: the same case
        yield


def train_two_processes(out: Path) -> subprocess.CompletedProcess:
    """`vae train`'s flags under torchrun with 2 processes; a failure shows the end of torchrun's stderr."""
    # 64 rows per process and step: the same 128 rows per step as the single-process run below.
    with default_port_taken():
        result = subprocess.run(
            [*TORCHRUN_2, "-m", "training.train", *COMMON, "--batch-size", "64", "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert result.returncode == 0, f"torchrun exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "model"
    return out, train_two_processes(out)


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "model"
    result = subprocess.run(
        [VAE, "train", *COMMON, "--batch-size", "128", "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_two_processes_write_one_complete_model_directory(two_process_run):
    out, result = two_process_run
    artifact = load_artifact(out)  # every sha256 checks out
    assert artifact.manifest.training.epochs == 8
    assert all(v <= 1e-4 for by_graph in artifact.manifest.parity.values() for v in by_graph.values())
    assert result.stdout.count("wrote ") == 1  # only the main process wrote and reported it
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]


def test_two_processes_match_one_within_tolerance(two_process_run, one_process_run):
    distributed = load_artifact(two_process_run[0]).manifest.training.best_val_elbo
    single = load_artifact(one_process_run).manifest.training.best_val_elbo
    assert abs(distributed - single) < 3.0, (distributed, single)  # nats per input, after 8 epochs


def test_validation_metrics_are_identical_on_every_process(two_process_run):
    # Both processes stop at the same epoch only if they saw the same all-reduced metrics; the history
    # is the main process's, and it covers every validation row.
    history = [json.loads(line) for line in (two_process_run[0] / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 8 and all("val_elbo" in row for row in history)


def test_same_seed_and_world_size_give_the_same_weights(two_process_run, tmp_path):
    out = tmp_path / "again"
    train_two_processes(out)
    first = torch.load(two_process_run[0] / "checkpoint.pt", weights_only=True)["state_dict"]
    second = torch.load(out / "checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_device_selection():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA device is available here"):
            resolve_device("cuda")


def test_a_world_of_one_sums_nothing():
    assert World().sum([1.0, 2.5]) == [1.0, 2.5] and World().main


def test_threads_sets_torchs_cpu_threads(tmp_path):
    """--threads N: torch computes with N threads in this process (0 leaves torch's default)."""
    code = (
        "import torch; from training.train import TrainConfig, train; "
        f"default = torch.get_num_threads(); train(TrainConfig(data='digits', out={str(tmp_path / 'm')!r}, epochs=1, "
        "hidden=[16], latent_dim=2, threads=1, progress=False, score_iw_samples=4)); "
        "print(default, torch.get_num_threads())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["2", "1"]
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["training"]["config"]["threads"] == 1
