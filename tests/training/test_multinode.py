"""Multi-node torchrun on one host: two "nodes" with a c10d rendezvous give the single-node two-process weights."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
# Small on purpose: the test is about the rendezvous and the world, not about learning digits.
COMMON = [
    "-m",
    "training.train",
    "--data",
    "digits",
    "--epochs",
    "2",
    "--hidden",
    "16",
    "--latent-dim",
    "2",
    "--score-iw-samples",
    "4",
    "--threads",
    "1",
    "--batch-size",
    "64",
    "--seed",
    "0",
    "--no-progress",
]
TIMEOUT_S = 300  # for all the agents of one run together


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_agents(commands: dict[str, list[str]]) -> None:
    """Runs torchrun agents that need each other; a failure or a hang shows the end of each one's stderr."""
    with tempfile.TemporaryDirectory() as logs:
        agents = {}
        for name, command in commands.items():
            # stderr to a file, not a pipe that nobody reads until the end: a full pipe would block torchrun.
            with open(Path(logs) / f"{name}.err", "w") as stderr:
                # A session of its own: killing it then also kills the workers that torchrun started.
                agents[name] = subprocess.Popen(
                    command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
                )
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                codes = [a.poll() for a in agents.values()]
                if None not in codes or any(code not in (None, 0) for code in codes):
                    break  # all done, or one failed: the others would wait at the rendezvous until their timeout
                time.sleep(0.2)
        finally:
            for agent in agents.values():
                if agent.poll() is None:
                    os.killpg(agent.pid, signal.SIGKILL)
                agent.wait()
        if any(a.returncode != 0 for a in agents.values()):
            report = "\n".join(
                f"--- {name}: torchrun exited {agent.returncode}\n{(Path(logs) / f'{name}.err').read_text()[-3000:]}"
                for name, agent in agents.items()
            )
            why = f"-9: killed after {TIMEOUT_S} s, or because another agent failed"
            raise AssertionError(f"torchrun failed ({why}):\n{report}")


def train_two_nodes(out: Path) -> None:
    """Two torchrun agents, one process each, meeting at a c10d store on 127.0.0.1 as two machines would."""
    endpoint = f"127.0.0.1:{free_port()}"
    # Both agents see 127.0.0.1 as their own address, so each would try to host the store: is_host says which
    # one does, as the machine at the endpoint's address would on a real cluster. --node-rank is read only by
    # the static rendezvous; c10d numbers the nodes in the order they join.
    run_agents(
        {
            f"node-{node_rank}": [
                TORCHRUN,
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(node_rank),
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                endpoint,
                "--rdzv-id",
                "vae-multinode-test",
                "--rdzv-conf",
                f"is_host={str(node_rank == 0).lower()}",
                *COMMON,
                "--out",
                str(out),
            ]
            for node_rank in (0, 1)
        }
    )


def train_one_node(out: Path) -> None:
    run_agents({"one-node": [TORCHRUN, "--standalone", "--nproc-per-node", "2", *COMMON, "--out", str(out)]})


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(model_dir / "checkpoint.pt", weights_only=True)["state_dict"]


def test_two_nodes_give_the_weights_of_one_node_with_two_processes(tmp_path):
    train_two_nodes(tmp_path / "two-nodes")
    train_one_node(tmp_path / "one-node")
    multi, single = weights(tmp_path / "two-nodes"), weights(tmp_path / "one-node")
    assert multi.keys() == single.keys()
    assert [k for k in multi if not torch.equal(multi[k], single[k])] == []
    # Only the global rank 0 wrote a model directory, and only one.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one-node", "two-nodes"]
