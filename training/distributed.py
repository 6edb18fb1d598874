"""Data-parallel training across processes with PyTorch's own runtime (torchrun sets the environment).

One process per device: `torchrun --nproc-per-node N -m training.train ...`. The backend is gloo on CPU
and nccl on CUDA; without torchrun's variables, training runs in this one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


class DeviceError(ValueError):
    """--device asks for a device this machine does not have."""


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """auto: CUDA when present, else the CPU."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda: no CUDA device is available here; use --device cpu or auto")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


@dataclass
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Only the main process writes checkpoints, the model directory and progress bars."""
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Elementwise sums over every process (the values themselves with one process)."""
        if self.size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def join_world(device_choice: str) -> World:
    """This process's place among torchrun's processes (or a world of one)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(device_choice, int(os.environ.get("LOCAL_RANK", "0")))
    if size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return World(rank, size, device)
